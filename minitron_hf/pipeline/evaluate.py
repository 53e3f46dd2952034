"""Stage ``evaluate``: validation loss and perplexity of the teacher and every student on the same held-out tokens,
greedy answers side by side, the distillation's gap recovered, and optionally ``minitron eval`` suites
(``evaluate.benchmarks``)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig

from ..arch import count_parameters
from ..compat import check_vocab
from ..config import check_fields, instantiate
from ..data import load_blocks
from ..eval import SUITES, suite_parts
from ..eval.base import CHANCE, accuracy_retained
from ..generation import generate_answer
from ..lm_loss import lm_loss
from ..loading import load_model, load_tokenizer, resolve_model
from ..outputs import write_json_atomically
from .base import PipelineError, Run, Stage, StageResult, prepared_data, read_result, rel

logger = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """Options of the evaluate stage."""

    samples: int | None = field(default=None, metadata={"help": "validation sequences (default: eval_samples)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    prompt: str = field(default="What is the capital of France?", metadata={"help": "prompt answered greedily by "
                        "every model, shown in the report"})
    max_new_tokens: int = field(default=32, metadata={"help": "length of those answers"})
    domain_prompts: list[str] | None = field(default=None, metadata={"help": "prompts from the distillation domain "
                                             "(e.g. the start of a Python function), continued greedily as raw "
                                             "text (no chat template) by every model and shown side by side: "
                                             "what the student kept where it was trained"})
    benchmarks: dict | None = field(default=None, metadata={"help": "`minitron eval` suites run on teacher and "
                                    "students, {suite: {its options}} with suite among base, humaneval, mbpp, "
                                    "mtbench, bfcl, instruct; tables in evaluate/<suite>/results.md, linked from "
                                    "the report"})


@dataclass
class EvaluateResult(StageResult):
    validation: dict | None = None  # {samples, seq_len, tokens}
    prompt: str | None = None
    domain_prompts: list[str] = field(default_factory=list)
    # {name: {path, val_loss, perplexity, params_*, answer, domain_answers}}, teacher first
    models: dict[str, dict] = field(default_factory=dict)
    gap_recovered: float | None = None  # (pruned - distilled) / (pruned - gap_reference) in validation loss
    gap_reference: str | None = None
    benchmarks: dict | None = None  # {suite: {results, table}}
    task_accuracy: dict | None = None  # see task_accuracy()


def gap_recovered(pruned: float, distilled: float, teacher: float) -> float | None:
    """(pruned - distilled) / (pruned - teacher): 1 = the student matches the teacher, 0 = no progress."""
    gap = pruned - teacher
    return None if abs(gap) < 1e-12 else (pruned - distilled) / gap


def task_accuracy(results: dict, ref: str) -> dict:
    """{task: {"chance", model: accuracy..., "retained"}} for the base-suite tasks with a known chance level;
    "retained" = (distilled - chance) / (``ref`` - chance), the share of the teacher's skill above chance that the
    distilled model kept (the pruned one when there is no distillation)."""
    out = {}
    student = "distilled" if "distilled" in results else "pruned"
    for task in (results.get(ref) or {}):
        if task not in CHANCE or student not in results:
            continue
        row = {"chance": CHANCE[task], **{m: r[task] for m, r in results.items() if task in r}}
        row["retained"] = accuracy_retained(results[student][task], results[ref][task], CHANCE[task])
        row["retained_by"] = student
        out[task] = row
    return out


class EvaluateStage(Stage):
    name = "evaluate"
    help = "evaluation options (samples, prompt, ...)"
    section = (EvaluateConfig,)
    inputs = ("data", "correct", "prune", "distill", "align")
    always = True
    result = EvaluateResult

    def check(self, run: Run, where: str, check_model: bool = True) -> None:
        ev = self.options(run)
        if (ev.samples is not None and ev.samples < 1) or ev.batch_size < 1 or ev.max_new_tokens < 0:
            raise PipelineError(f"{where}: section 'evaluate': samples and batch_size must be >= 1, "
                                f"max_new_tokens >= 0")
        self.benchmarks(run, ev, where)

    def options(self, run: Run) -> EvaluateConfig:
        return super().options(run)[0]

    def benchmarks(self, run: Run, ev: EvaluateConfig, where: str = "run config") -> dict:
        """{suite: its config object} of ``evaluate.benchmarks``, each checked like `minitron eval <suite>`'s
        options."""
        out = {}
        if ev.benchmarks is None:
            return out
        if not isinstance(ev.benchmarks, dict):
            raise PipelineError(f"{where}: section 'evaluate': benchmarks must map suites to options, e.g. "
                                f"{{base: {{tasks: [pydoc_continuation], limit: 30}}}}")
        for suite, opts in ev.benchmarks.items():
            if suite not in SUITES:
                raise PipelineError(f"{where}: section 'evaluate': benchmarks: unknown suite {suite!r}; allowed: "
                                    f"{', '.join(SUITES)}")
            cls = suite_parts(suite)[0]
            opts = dict(opts or {})
            check_fields(opts, [cls], f"{where}: section 'evaluate': benchmarks.{suite}", reserved=("output",))
            out[suite] = instantiate([cls], {**opts, "output": str(run.stage_dir(self.name) / suite)},
                                     where=f"{where}: section 'evaluate': benchmarks.{suite}")[0]
        return out

    def models(self, run: Run) -> dict[str, str]:
        """{name: path} of the models compared: the teacher first, then every student the run made."""
        models = {"teacher": run.cfg.teacher}
        if run.enabled("correct"):
            models["teacher (corrected)"] = str(run.stage_dir("correct") / "final")
        models["pruned"] = str(run.stage_dir("prune") / "model")
        if run.enabled("distill"):
            models["distilled"] = str(run.stage_dir("distill") / "final")
        if run.enabled("align"):
            align = read_result(run, "align")
            models["aligned"] = align.model if align is not None else None
        return models

    def run(self, run: Run, resume: bool) -> EvaluateResult:
        ev = self.options(run)
        samples = ev.samples or run.cfg.eval_samples
        models = self.models(run)
        tok = load_tokenizer(resolve_model(run.cfg.teacher))
        for name, path in models.items():  # the teacher's token ids fit every model, before any work
            check_vocab(resolve_model(path), tok, path, tokenizer_name=run.cfg.teacher)
        blocks = load_blocks(prepared_data(run), tok, "validation", run.cfg.seq_len, samples)
        rows = {}
        for name, path in models.items():
            d = resolve_model(path)
            model = load_model(d)
            loss = lm_loss(model, blocks, ev.batch_size, progress=False)
            rows[name] = {"path": str(path), "val_loss": loss, "perplexity": math.exp(min(loss, 50)),
                          **{f"params_{k}": v for k, v in count_parameters(AutoConfig.from_pretrained(d)).items()}}
            if ev.max_new_tokens:
                tok_m = load_tokenizer(d)
                rows[name]["answer"] = generate_answer(model, tok_m, ev.prompt, ev.max_new_tokens)
                if ev.domain_prompts:
                    rows[name]["domain_answers"] = [generate_answer(model, tok_m, p, ev.max_new_tokens, chat=False)
                                                    for p in ev.domain_prompts]
            logger.info("evaluate: %s val loss %.3f", name, loss)
            del model
        res = EvaluateResult(
            tokens=samples * run.cfg.seq_len * len(models), prompt=ev.prompt, domain_prompts=ev.domain_prompts or [],
            validation={"samples": samples, "seq_len": run.cfg.seq_len, "tokens": samples * run.cfg.seq_len},
            models=rows)
        ref = "teacher (corrected)" if "teacher (corrected)" in rows else "teacher"
        if "distilled" in rows:
            res.gap_recovered = gap_recovered(rows["pruned"]["val_loss"], rows["distilled"]["val_loss"],
                                              rows[ref]["val_loss"])
            res.gap_reference = ref
        suites = self.benchmarks(run, ev)
        if suites:  # the same models through `minitron eval <suite>`; tables linked from the report
            paths = {n: r["path"] for n, r in rows.items()}
            res.benchmarks = {}
            for suite, cfg in suites.items():
                _, run_suite, _ = suite_parts(suite)
                out = run_suite(list(paths.values()), cfg, names=list(paths))
                res.benchmarks[suite] = {"results": out["results"], "table": str(Path(cfg.output) / "results.md")}
            if "base" in res.benchmarks:
                res.task_accuracy = task_accuracy(res.benchmarks["base"]["results"], ref)
        write_json_atomically(run.stage_dir(self.name) / "evaluation.json", res.to_dict())
        return res

    def report(self, run: Run, result: EvaluateResult | None) -> list[str]:
        if result is None:
            return []
        ev = result.to_dict()
        v = result.validation
        L = ["## Evaluation", "", f"Held-out `{run.data.data}` validation split, {v['samples']} x {v['seq_len']} "
             f"tokens (the same tokens for every model).", "",
             "| model | parameters | non-embedding | val loss | perplexity |", "|---|---|---|---|---|"]
        for name, r in result.models.items():
            L.append(f"| {name} | {r['params_total'] / 1e6:.1f}M | {r['params_non_embedding'] / 1e6:.1f}M | "
                     f"{r['val_loss']:.3f} | {r['perplexity']:.1f} |")
        L.append("")
        if result.gap_recovered is not None:
            L += [f"**Gap recovered** by distillation: {100 * result.gap_recovered:.1f}% "
                  f"(= (pruned - distilled) / (pruned - {result.gap_reference}) in validation loss).", ""]
        for suite, b in (result.benchmarks or {}).items():
            table = Path(b["table"])
            L += [f"Benchmarks: `minitron eval {suite}` ([{rel(run, table)}]({rel(run, table)})):", ""]
            if table.exists():
                L += [table.read_text().strip(), ""]
        L += task_accuracy_table(ev)
        L += domain_answers_text(ev)
        answers = [(n, r["answer"]) for n, r in result.models.items() if r.get("answer") is not None]
        if answers:
            L += [f"Out of the domain: greedy chat answers to \"{result.prompt}\". {OUT_OF_DOMAIN_NOTE}"
                  if "distilled" in result.models else f"Greedy answers to \"{result.prompt}\":", ""]
            L += [f"- {n}: {a.strip()!r}" for n, a in answers] + [""]
        return L


OUT_OF_DOMAIN_NOTE = ("A student distilled only on the run's data (Python documentation and code for the embedded "
                      "default) was never shown conversations: this shows what distillation on a narrow domain costs, "
                      "not what the student kept. To keep an instruct teacher's chat ability, put chat data in the "
                      "distillation mix or align afterwards (README: 'What the demo's student can and cannot do').")


def task_accuracy_table(ev: dict) -> list[str]:
    """Markdown lines: downstream accuracy of every model and the share of the teacher's kept by the student."""
    acc = ev.get("task_accuracy") or {}
    if not acc:
        return []
    models = [m for m in ev["models"] if any(m in row for row in acc.values())]
    L = ["Downstream accuracy (`minitron eval base`; accuracy retained = (student - chance) / (teacher - chance)):",
         "", "| task | chance | " + " | ".join(models) + " | accuracy retained |",
         "|---|---|" + "---|" * len(models) + "---|"]
    for task, row in acc.items():
        kept = "n/a" if row["retained"] is None else f"{100 * row['retained']:.0f}% ({row['retained_by']})"
        L.append(f"| {task} | {row['chance']:.2f} | " + " | ".join(f"{row[m]:.3f}" if m in row else "" for m in models)
                 + f" | {kept} |")
    return L + [""]


def domain_answers_text(ev: dict) -> list[str]:
    """Markdown lines: every model's greedy continuation of each in-domain prompt, side by side."""
    prompts = ev.get("domain_prompts") or []
    if not prompts:
        return []
    L = ["In the distillation domain: greedy continuations (raw text, no chat template) of the same prompts:", ""]
    for i, prompt in enumerate(prompts):
        L += [f"Prompt {i + 1}:", "", "```", prompt, "```", ""]
        for name, r in ev["models"].items():
            ans = (r.get("domain_answers") or [None] * len(prompts))[i]
            if ans is not None:
                L += [f"- {name}:", "", "```", prompt + ans.rstrip(), "```", ""]
    return L


STAGE = EvaluateStage()
