"""Instruct benchmarks, teacher vs students (``minitron eval instruct``): the paper's Table 2.

The aligned models of arXiv 2408.11796 are compared on IFEval, MT-Bench, BFCL live, GPQA, HumanEval,
MBPP, GSM8K and MMLU, all 0-shot (:data:`BENCHMARKS`). Each runs through the code that owns it:

- LM Evaluation Harness (:mod:`.harness`) for IFEval, GPQA, GSM8K and MMLU, with the tokenizer's chat
  template applied to every request (``chat_template``). One model load serves all four. IFEval's number
  is the paper's: the mean of prompt- and instruction-level accuracy, strict and loose (each is reported
  too). GPQA is ``gpqa_main_zeroshot`` by default (0-shot multiple choice on the 448-question main set,
  the setting the Nemotron/Llama-3 instruct reports call "GPQA (0-shot)"); ``gpqa_task`` switches to the
  diamond set. GSM8K is lm-eval's ``gsm8k`` at 0 shots, scored by its flexible extraction (the last number
  of the answer: an instruct model does not write the few-shot ``#### N`` format).
- :mod:`.code` for HumanEval and MBPP pass@1 (greedy, one sample, by default), :mod:`.mtbench` for MT-Bench
  (an OpenAI-compatible judge: ``judge_base_url``, ``judge_model``, ``judge_api_key_env``), and
  :mod:`.bfcl` for BFCL live accuracy. Their options are passed on by name; each writes its own files into
  a subfolder of ``output``.

Everything that can be checked is checked before the first model loads: benchmark names (with the nearest
suggestion), lm-eval task names, IFEval's packages and NLTK data, the sub-benchmarks' own options and the
judge endpoint. ``results.json`` and ``results.md`` are rewritten after every benchmark, so a failure late in
a long run keeps what was measured.

Offline: lm-eval reads task data from the Hugging Face Hub (``google/IFEval``; GPQA is gated: accept its
terms and log in). Local copies run through task YAML in ``tasks_dir`` that ``include`` lm-eval's own task
file and point ``dataset_path`` at local files, named with ``ifeval_task`` / ``gpqa_task`` / ...
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from .. import loading
from ..config import at_least, one_of
from ..model_files import check_checkpoint
from . import suite_class, write_results
from .endpoint import check_endpoint
from .harness import check_tasks, evaluate_model, score, task_manager, wrap_model
from .suite import EvalError, Suite

logger = logging.getLogger(__name__)

# benchmark -> row label of Table 2 (the paper's order)
BENCHMARKS = {
    "ifeval": "IFEval",
    "mtbench": "MT-Bench",
    "bfcl": "BFCL live",
    "gpqa": "GPQA (0)",
    "humaneval": "HumanEval (0)",
    "mbpp": "MBPP (0)",
    "gsm8k": "GSM8K (0)",
    "mmlu": "MMLU",
}
# the four IFEval accuracies; the paper's IFEval number is their mean
IFEVAL_METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
# benchmarks run by lm-eval: the config field naming the task (``task`` or ``task:metric``)
HARNESS = {"ifeval": "ifeval_task", "gpqa": "gpqa_task", "gsm8k": "gsm8k_task", "mmlu": "mmlu_task"}
# benchmarks run by another suite: (the suite, as registered in minitron_hf.eval.SUITES; result keys tried for the
# headline number; extra InstructEvalConfig fields passed on as {sub-config field: our field})
OTHERS = {
    "humaneval": ("humaneval", ("pass@1",), {"samples": "code_samples", "temperature": "code_temperature"}),
    "mbpp": ("mbpp", ("pass@1",),
             {"samples": "code_samples", "temperature": "code_temperature", "data_files": "mbpp_data_files"}),
    "mtbench": ("mtbench", ("mtbench", "score"),
                {"judge_base_url": "judge_base_url", "judge_model": "judge_model",
                 "judge_api_key_env": "judge_api_key_env"}),
    "bfcl": ("bfcl", ("bfcl_live", "live_overall", "accuracy"), {"venv": "bfcl_venv"}),
}
# InstructEvalConfig fields every sub-benchmark receives when its config has a field of that name
SHARED = ("limit", "batch_size", "device", "seed", "max_new_tokens")
CHAT_TEMPLATE = ("auto", "always", "never")


@dataclass
class InstructEvalConfig:
    """Options of ``minitron eval instruct``."""

    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS), metadata={
        "help": "benchmarks, rows of the table in this order: " + ", ".join(BENCHMARKS)})
    limit: int | None = field(default=None, metadata={"help": "only the first N examples of each benchmark (of each "
                              "subject for MMLU); for tests and smoke runs"})
    batch_size: int = field(default=8, metadata={"help": "requests per forward pass / prompts per generate call"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "tokens generated per answer in every generative benchmark (default: each one's own: IFEval 1280, "
                "GSM8K 256, HumanEval 384, MT-Bench 1024)"})
    chat_template: str = field(default="auto", metadata={
        "help": "wrap lm-eval requests in the tokenizer's chat template: auto (when the tokenizer has one), "
                "always, never", "choices": list(CHAT_TEMPLATE)})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system turn of lm-eval's chat requests (default: none, the template's own default if it has one)"})
    ifeval_task: str = field(default="ifeval", metadata={
        "help": "lm-eval task of IFEval (its process_results: the four accuracies, averaged in the table)"})
    gpqa_task: str = field(default="gpqa_main_zeroshot:acc", metadata={
        "help": "lm-eval task[:metric] of GPQA, e.g. gpqa_diamond_zeroshot:acc (Hub data gated: accept the terms)"})
    gsm8k_task: str = field(default="gsm8k:exact_match,flexible-extract", metadata={
        "help": "lm-eval task[:metric] of GSM8K (0-shot; e.g. gsm8k_cot_zeroshot:exact_match,flexible-extract)"})
    mmlu_task: str = field(default="mmlu:acc", metadata={"help": "lm-eval task[:metric] of MMLU"})
    mmlu_fewshot: int = field(default=0, metadata={"help": "MMLU shots (the issue's setting 0; NVIDIA's model cards "
                                                   "report 5)"})
    tasks_dir: str | None = field(default=None, metadata={"help": "folder of local lm-eval task YAML files"})
    code_samples: int = field(default=1, metadata={"help": "HumanEval/MBPP completions per problem (pass@1)"})
    code_temperature: float = field(default=0.0, metadata={
        "help": "HumanEval/MBPP sampling temperature (0 = greedy; > 0 with code_samples > 1 for sampled pass@1)"})
    mbpp_data_files: str | None = field(default=None, metadata={
        "help": "MBPP from a local JSONL file in MBPP's schema instead of the Hub (minitron eval mbpp --data-files)"})
    bfcl_venv: str | None = field(default=None, metadata={
        "help": "virtual environment of bfcl-eval (minitron eval bfcl --venv; default ~/.cache/minitron_hf/bfcl-venv)"})
    judge_base_url: str | None = field(default=None, metadata={
        "help": "MT-Bench judge: OpenAI-compatible API URL (default: MT-Bench's own, the OpenAI API)"})
    judge_model: str | None = field(default=None, metadata={
        "help": "MT-Bench judge model (default: MT-Bench's own, gpt-4-turbo as in the paper)"})
    judge_api_key_env: str | None = field(default=None, metadata={
        "help": "environment variable holding the judge's API key (default: MT-Bench's own, OPENAI_API_KEY)"})
    seed: int = field(default=0, metadata={"help": "random seed (lm-eval, sampling)"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda (default: cuda when available)"})
    output: str | None = field(default=None, metadata={
        "help": "directory for results.json, results.md, samples_<benchmark>.jsonl and a folder per "
                "HumanEval/MBPP/MT-Bench/BFCL run"})

    def __post_init__(self):
        benches = check_benchmarks(self.benchmarks)
        at_least(self, ("batch_size", "code_samples"), error=EvalError)
        at_least(self, ("max_new_tokens", "limit"), optional=("max_new_tokens", "limit"), error=EvalError)
        at_least(self, ("mmlu_fewshot",), low=0, error=EvalError)
        one_of("chat_template", self.chat_template, CHAT_TEMPLATE, error=EvalError)
        if self.code_temperature < 0:
            raise EvalError(f"code_temperature={self.code_temperature} must be >= 0 (0 = greedy)")
        for b in benches:
            if b in HARNESS:
                harness_task(self, b)
        if self.judge_base_url is not None and not str(self.judge_base_url).startswith(("http://", "https://")):
            raise EvalError(f"judge_base_url={self.judge_base_url!r}: expected the URL of an OpenAI-compatible API, "
                            f"e.g. https://api.openai.com/v1 or http://127.0.0.1:8001/v1 (vLLM)")


def check_benchmarks(names) -> list[str]:
    """The benchmark names, each known (else the nearest suggestion), in the order given, once each."""
    names = [names] if isinstance(names, str) else list(names or [])
    if not names:
        raise EvalError(f"benchmarks: name at least one of {', '.join(BENCHMARKS)}")
    for n in names:
        if n not in BENCHMARKS:
            near = difflib.get_close_matches(str(n).lower().replace("-", "").replace("_", ""), list(BENCHMARKS), n=1,
                                             cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise EvalError(f"benchmarks: unknown benchmark {n!r}{hint} (allowed: {', '.join(BENCHMARKS)})")
    return list(dict.fromkeys(names))


def harness_task(cfg: InstructEvalConfig, bench: str) -> tuple[str, tuple[str, ...]]:
    """(lm-eval task, metrics averaged into the headline number) of an lm-eval benchmark."""
    spec = getattr(cfg, HARNESS[bench])
    task, _, metric = str(spec).partition(":")
    if not task:
        raise EvalError(f"{HARNESS[bench]}={spec!r}: expected an lm-eval task name, optionally :metric")
    if bench == "ifeval":
        if metric:
            raise EvalError(f"ifeval_task={spec!r}: IFEval reports its four accuracies; give the task name only")
        return task, IFEVAL_METRICS
    return task, (metric or "acc",)


def check_ifeval_dependencies() -> None:
    """IFEval's checkers need langdetect, immutabledict and NLTK >= 3.9.1 with the ``punkt_tab`` sentence
    model (sentence and word counts). lm-eval downloads punkt_tab when its IFEval module is imported and,
    offline, goes on without it until the first response with a sentence-count instruction fails; here a
    missing model is downloaded the same way, and when that fails the run stops before any model loads."""
    missing = []
    for mod in ("langdetect", "immutabledict", "nltk"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise EvalError(f"benchmarks: ifeval needs {', '.join(missing)}: pip install langdetect==1.0.9 "
                        f"immutabledict==4.3.1 'nltk>=3.9.1' (lm-eval's [ifeval] extra)")
    import nltk
    from nltk.tokenize.punkt import PunktTokenizer

    def loads() -> bool:
        try:
            PunktTokenizer("english")
            return True
        except LookupError:
            return False

    if loads():
        return
    logger.info("ifeval: NLTK's punkt_tab sentence model is not installed; downloading it")
    try:
        nltk.download("punkt_tab", quiet=True, raise_on_error=False)
    except Exception as e:  # noqa: BLE001 - any failure of the download ends in the message below
        logger.info("punkt_tab download failed: %s", e)
    if not loads():
        raise EvalError(
            "benchmarks: ifeval needs NLTK's 'punkt_tab' sentence model (for its sentence- and word-count "
            "instructions) and it is not installed, nor could it be downloaded. On a machine with internet: "
            "python -m nltk.downloader punkt_tab, then copy its tokenizers/punkt_tab folder into one of "
            f"{', '.join(map(str, nltk.data.path))} (or a folder named by the NLTK_DATA environment variable)")


def _sub_suite(bench: str):
    """The :class:`~.suite.Suite` subclass that runs a benchmark of :data:`OTHERS`, its module imported now."""
    try:
        return suite_class(OTHERS[bench][0])
    except (ImportError, AttributeError, KeyError) as e:
        raise EvalError(f"benchmarks: {bench!r} is not available in this install (suite {OTHERS[bench][0]!r}: "
                        f"{type(e).__name__}: {e}); leave it out of benchmarks") from None


def sub_config(bench: str, cfg: InstructEvalConfig):
    """The options of a sub-benchmark from ours: the shared ones and its own (:data:`OTHERS`), copied only
    where its config has a field of that name and our value is set; ``output`` becomes a subfolder. Built, hence
    validated (its ``__post_init__``), before any model loads."""
    cls = _sub_suite(bench).config_class
    names = {f.name for f in fields(cls)}
    values = {n: getattr(cfg, n) for n in SHARED}
    values.update({theirs: getattr(cfg, ours) for theirs, ours in OTHERS[bench][2].items()})
    values["output"] = str(Path(cfg.output) / bench) if cfg.output else None
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def benchmark_scores(bench: str, results: dict, task: str, metrics) -> dict:
    """The table's number of an lm-eval benchmark, the mean of ``metrics`` of ``task`` in
    :func:`.harness.evaluate_model`'s ``results`` (IFEval: of its four accuracies), and, when there are
    several, each under ``bench/<metric>``."""
    values = {m: score(results, task, m) for m in metrics}
    out = {bench: sum(values.values()) / len(values)}
    if len(values) > 1:
        out.update({f"{bench}/{m}": v for m, v in values.items()})
    return out


def _labels(out: dict) -> dict:
    cfg = out["config"]
    labels = {b: BENCHMARKS[b] for b in out["benchmarks"]}
    if "mmlu" in labels:
        labels["mmlu"] = f"MMLU ({cfg['mmlu_fewshot']})"
    judge = (out.get("settings", {}).get("mtbench") or {}).get("judge_model") or cfg.get("judge_model")
    if "mtbench" in labels and judge:
        labels["mtbench"] = f"MT-Bench ({judge})"
    return labels


def _sample_rows(model: str, task: str, records: list[dict], metrics) -> list[dict]:
    """lm-eval's per-document records, trimmed to what a reader checks: the document, the (filtered)
    response and its per-document metrics."""
    rows = []
    for s in records:
        args = s.get("arguments")
        prompt = args[0][0] if isinstance(args, (list, tuple)) and args and isinstance(args[0], (list, tuple)) else None
        row = {"model": model, "task": task, "doc_id": s.get("doc_id"), "doc": s.get("doc"), "prompt": prompt,
               "target": s.get("target"), "filter": s.get("filter"), "response": s.get("filtered_resps")}
        row.update({m: s[m] for m in (*IFEVAL_METRICS, *(x.split(",")[0] for x in metrics)) if m in s})
        rows.append(row)
    return rows


class InstructSuite(Suite):
    """The paper's Table 2. The lm-eval benchmarks run here: ``generate`` evaluates them on one model, one at a
    time (the model loaded once), and ``score`` records each as it comes; HumanEval, MBPP, MT-Bench and BFCL run
    through their own suites, each on every model, after them. :meth:`run` (overridden) rewrites results.json and
    results.md after every benchmark."""

    name = "instruct"
    help = "the paper's Table 2: IFEval, MT-Bench, BFCL, GPQA, HumanEval, MBPP, GSM8K, MMLU"
    config_class = InstructEvalConfig

    @staticmethod
    def table(out: dict) -> str:
        return results_table(out)

    def check(self, models, names) -> list:
        """Checkpoint directories; lm-eval task names, IFEval's packages and data, the sub-benchmarks' options
        and the judge endpoint, all before any model loads."""
        cfg = self.cfg
        self.benches = check_benchmarks(cfg.benchmarks)
        self.tasks = {b: harness_task(cfg, b) for b in self.benches if b in HARNESS}
        if "ifeval" in self.benches:
            check_ifeval_dependencies()
        self.manager = task_manager(cfg.tasks_dir) if self.tasks else None  # lm-eval's task index: seconds
        for b, (task, _) in self.tasks.items():
            try:
                check_tasks([task], self.manager)
            except EvalError as e:
                raise EvalError(f"{HARNESS[b]}: {e}") from None
        self.subs = {b: sub_config(b, cfg) for b in self.benches if b in OTHERS}
        if "mtbench" in self.subs:  # the judge answers, now
            j = self.subs["mtbench"]
            check_endpoint(j.judge_base_url, field="judge_base_url", api_key_env=j.judge_api_key_env,
                           model=j.judge_model, model_field="judge_model")
        paths = [check_checkpoint(loading.resolve_model(m), field="models") for m in models]
        if cfg.chat_template == "always" and self.tasks:
            for name, path in zip(names, paths):
                if not getattr(loading.load_tokenizer(path), "chat_template", None):
                    raise EvalError(f"chat_template=always: the tokenizer of {name!r} has no chat template (use auto)")
        return paths

    def generate(self, model, name: str):
        """The lm-eval benchmarks on one checkpoint, one at a time: yields (benchmark, lm-eval results, per-document
        records, whether the chat template was applied, seconds). The model loads before the first and is freed
        after the last."""
        cfg = self.cfg
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = loading.load_model(model, device=device,
                                    dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
        tok = loading.load_tokenizer(model)
        chat = cfg.chat_template == "always" or (cfg.chat_template == "auto" and bool(getattr(tok, "chat_template",
                                                                                              None)))
        lm = wrap_model(loaded, tok, cfg.batch_size)
        gen_kwargs = {"max_gen_toks": cfg.max_new_tokens} if cfg.max_new_tokens else None
        for b, (task, _) in self.tasks.items():
            t0, recs = time.time(), {}
            r = evaluate_model(loaded, tok, [task], num_fewshot=self.out["settings"][b]["num_fewshot"],
                               limit=cfg.limit, batch_size=cfg.batch_size, manager=self.manager, lm=lm, seed=cfg.seed,
                               apply_chat_template=chat, system_instruction=cfg.system_prompt if chat else None,
                               gen_kwargs=gen_kwargs, samples=recs)
            yield b, r, recs, chat, time.time() - t0
        del loaded, lm

    def score(self, name: str, outputs) -> dict:
        """Each lm-eval benchmark's number (and its metrics) as :meth:`generate` yields it; the files rewritten
        after each."""
        res = self.out["results"][name]
        for b, r, recs, chat, seconds in outputs:
            task, metrics = self.tasks[b]
            res.update(benchmark_scores(b, r, task, metrics))
            self.out["settings"][b]["chat_template"][name] = chat
            for t, records in recs.items():  # a group (MMLU) logs its subtasks
                self.rows.setdefault(b, []).extend(_sample_rows(name, t, records, metrics))
            logger.info("%s %s (%s): %.4f in %.0f s", name, b, task, res[b], seconds)
            self.write()
        return res

    def samples(self) -> dict:
        return {f"samples_{b}": rows for b, rows in self.rows.items()}

    def write(self) -> None:
        write_results(self.cfg.output, self.out, results_table(self.out), **self.samples())

    def run(self, models, names=None) -> dict:
        """Every benchmark on every model; {"config", "benchmarks", "settings", "results": {model: {key: value}},
        "complete"}."""
        cfg = self.cfg
        models = list(models or [])
        names = self.check_names(models, names)
        paths = self.check(models, names)
        self.out = out = {"config": asdict(cfg), "benchmarks": self.benches, "settings": {},
                          "results": {n: {} for n in names}, "complete": False}
        self.rows: dict[str, list] = {}
        for b, (task, metrics) in self.tasks.items():
            out["settings"][b] = {"task": task, "metrics": list(metrics),
                                  "num_fewshot": cfg.mmlu_fewshot if b == "mmlu" else 0, "chat_template": {}}
        for name, path in zip(names, paths if self.tasks else []):
            self.score(name, self.generate(path, name))
        for b, sub_cfg in self.subs.items():
            t0 = time.time()
            sub = _sub_suite(b).run_suite([str(p) for p in paths], sub_cfg, names=names)
            out["settings"][b] = {k: v for k, v in (sub.get("config") or {}).items() if k != "output"}
            for name in names:
                r = sub["results"][name]
                key = next((k for k in OTHERS[b][1] if k in r), None)
                if key is None:
                    raise EvalError(f"{b} reported none of {', '.join(OTHERS[b][1])} for {name!r} (it has: "
                                    f"{', '.join(r)})")
                out["results"][name][b] = float(r[key])
                out["results"][name].update({f"{b}/{k}": v for k, v in r.items() if isinstance(v, (int, float))})
            logger.info("%s done in %.0f s", b, time.time() - t0)
            self.write()
        out["complete"] = True
        self.write()
        return out


def run_instruct_eval(models, cfg: InstructEvalConfig, names=None) -> dict:
    """Every benchmark on every model; {"config", "benchmarks", "settings", "results": {model: {key: value}}}.

    ``results[model][bench]`` is the table's number (0-1, MT-Bench 1-10); details are under
    ``bench/<metric>`` keys (e.g. ``ifeval/prompt_level_strict_acc``, ``mtbench/turn1``)."""
    return InstructSuite(cfg).run(models, names)


def _fmt(bench: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if bench == "mtbench" else f"{100 * v:.1f}"


def results_table(out: dict) -> str:
    """Table 2 layout: a row per benchmark, a column per model (the first the teacher); accuracies x 100,
    MT-Bench on its 1-10 scale. IFEval's four accuracies follow in a second table."""
    models = list(out["results"])
    labels = _labels(out)
    lines = ["| benchmark | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for b in out["benchmarks"]:
        lines.append(f"| {labels[b]} | " + " | ".join(_fmt(b, out["results"][m].get(b)) for m in models) + " |")
    if "ifeval" in out["benchmarks"]:
        lines += ["", "IFEval: the mean of four accuracies (x 100)", "",
                  "| IFEval accuracy | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for metric in IFEVAL_METRICS:
            lines.append(f"| {metric} | " + " | ".join(_fmt("ifeval", out["results"][m].get(f"ifeval/{metric}"))
                                                      for m in models) + " |")
    notes = []
    for b in out["benchmarks"]:
        s = out.get("settings", {}).get(b) or {}
        if "task" in s:
            chat = s.get("chat_template") or {}
            how = "chat template" if chat and all(chat.values()) else \
                "no chat template" if chat and not any(chat.values()) else "chat template per model"
            notes.append(f"{labels[b]}: lm-eval `{s['task']}` ({', '.join(s['metrics'])}), {s['num_fewshot']}-shot, "
                         f"{how}")
    if out["config"].get("limit"):
        notes.append(f"limit: the first {out['config']['limit']} examples of each benchmark (not a full run)")
    if not out.get("complete", True):
        notes.append("incomplete: the run stopped before every benchmark finished")
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))
