"""Base-model benchmarks through LM Evaluation Harness, teacher vs students (``minitron eval base``).

The paper's settings (arXiv 2408.11796 Table 1) are :data:`PAPER_TASKS`; each task runs with its own
few-shot count, the models one after another on the same tasks, and the results land in one JSON
and a markdown table laid out like Table 1 (a row per benchmark, a column per model). Task data
comes from the Hub through lm-eval; offline, use local task YAML (``tasks_dir``) or the built-in
``pydoc_continuation`` (:mod:`.harness`). HumanEval/MBPP pass@1 run through :mod:`.code`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import write_results
from .harness import EvalError, check_tasks, evaluate_model, score, task_manager

logger = logging.getLogger(__name__)

# task -> (few-shot examples, the metric reported, the label of Table 1, examples: a count or a fraction)
PAPER_TASKS = {
    "winogrande": (5, "acc", "Winogrande (5)", None),
    "arc_challenge": (25, "acc_norm", "ARC Challenge (25)", None),
    "mmlu": (5, "acc", "MMLU (5)", None),
    "hellaswag": (10, "acc_norm", "HellaSwag (10)", None),
    "gsm8k": (5, "exact_match,strict-match", "GSM8K (5)", None),
    "truthfulqa_mc2": (0, "acc", "TruthfulQA (0)", None),
    "xlsum_en": (3, "rougeL", "XLSum en (20%) (3)", 0.2),  # our task YAML: minitron_hf/eval/tasks/xlsum_en
}

# accuracy of a uniform guess (1 / choices), for "accuracy retained" = (student - chance) / (teacher - chance);
# tasks whose chance level is not one number (TruthfulQA MC2, generation tasks) are left out
CHANCE = {"pydoc_continuation": 0.25, "winogrande": 0.5, "arc_challenge": 0.25, "mmlu": 0.25, "hellaswag": 0.25}


def accuracy_retained(student: float, teacher: float, chance: float) -> float | None:
    """(student - chance) / (teacher - chance): 1 = the student keeps all of the teacher's skill above chance, 0 =
    none of it. None when the teacher itself is at chance."""
    return None if abs(teacher - chance) < 1e-9 else (student - chance) / (teacher - chance)


@dataclass
class BaseEvalConfig:
    """Options of ``minitron eval base``."""

    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS), metadata={
        "help": "lm-eval tasks (default: the paper's Table 1 set, each with its few-shot count)"})
    num_fewshot: int | None = field(default=None, metadata={"help": "few-shot count for every task (default: the "
                                    "paper's per task, else the task's own)"})
    metric: str | None = field(default=None, metadata={"help": "metric to report for tasks outside the paper's set "
                               "(default acc)"})
    limit: float | None = field(default=None, metadata={"help": "examples per task: a count, or a fraction < 1"})
    batch_size: int = field(default=8, metadata={"help": "requests per forward pass"})
    tasks_dir: str | None = field(default=None, metadata={"help": "folder of local lm-eval task YAML files"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda (default: cuda when available)"})
    model_base_url: str | None = field(default=None, metadata={
        "help": "evaluate models served by an OpenAI-compatible server (vLLM: `minitron serve`, e.g. "
                "http://127.0.0.1:8000/v1) through lm-eval's local-completions model: the models are then served "
                "model names; loglikelihood tasks need prompt logprobs (echo + logprobs, which vLLM returns)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer (a checkpoint directory) for model_base_url requests (default: the served model's "
                "root directory, as the server reports it)"})
    api_key_env: str | None = field(default=None, metadata={"help": "environment variable holding the server's "
                                    "API key (unset: no key)"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once with model_base_url"})
    output: str | None = field(default=None, metadata={"help": "directory for results.json and results.md"})


def _settings(task: str, cfg: BaseEvalConfig) -> tuple[int | None, str, str]:
    """(few-shot count, metric, row label) of a task under ``cfg``."""
    paper_shots, metric, label, _ = PAPER_TASKS.get(task, (None, cfg.metric or "acc", None, None))
    shots = cfg.num_fewshot if cfg.num_fewshot is not None else paper_shots
    if label is None or shots != paper_shots:
        label = f"{task} ({'default' if shots is None else shots})"
    return shots, metric, label


def run_base_eval(models, cfg: BaseEvalConfig, names=None) -> dict:
    """Every model on every task; {"config", "tasks", "results": {model: {task: value}}}."""
    import torch

    from ..model_files import check_checkpoint
    from ..loading import load_model, load_tokenizer, resolve_model

    if not models:
        raise EvalError("models: name at least one checkpoint (the first is the teacher column)")
    if cfg.limit is not None and cfg.limit <= 0:
        raise EvalError(f"limit={cfg.limit} must be > 0")
    names = [str(m) for m in models] if names is None else list(names)
    if cfg.model_base_url:
        served = served_models(cfg, models)
    else:
        paths = [check_checkpoint(resolve_model(m), field="models") for m in models]
    manager = task_manager(cfg.tasks_dir)
    check_tasks(cfg.tasks, manager)  # before any model loads
    def task_limit(task):  # --limit, else the paper's per-task share (XLSum: 20%)
        lim = cfg.limit if cfg.limit is not None else PAPER_TASKS.get(task, (None,) * 4)[3]
        return int(lim) if lim is not None and lim >= 1 else lim
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for i, name in enumerate(names):
        if cfg.model_base_url:
            model = tok = None
            lm = endpoint_lm(cfg, *served[i])
        else:
            model = load_model(paths[i], device=device,
                               dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
            tok, lm = load_tokenizer(paths[i]), None
        results[name] = {}
        for task in cfg.tasks:
            shots, metric, _ = _settings(task, cfg)
            t0 = time.time()
            r = evaluate_model(model, tok, [task], num_fewshot=shots, limit=task_limit(task), batch_size=cfg.batch_size,
                               manager=manager, lm=lm)
            results[name][task] = score(r, task, metric)
            logger.info("%s %s (%s-shot): %s = %.4f in %.0f s", name, task, shots, metric, results[name][task],
                        time.time() - t0)
        del model
    out = {"config": asdict(cfg), "tasks": {t: dict(zip(("num_fewshot", "metric", "label"), _settings(t, cfg)))
                                            for t in cfg.tasks}, "results": results}
    write_results(cfg.output, out, results_table(out))
    return out


def served_models(cfg: BaseEvalConfig, models) -> list[tuple[str, str, int | None]]:
    """(served name, tokenizer directory, max_model_len) of each model at ``cfg.model_base_url``; raises
    before any evaluation when the server does not answer, does not serve a model, or no tokenizer is found."""
    from . import endpoint

    if cfg.concurrency < 1:
        raise EvalError(f"concurrency={cfg.concurrency} must be >= 1")
    for m in models:
        endpoint.check_endpoint(cfg.model_base_url, field="model_base_url", api_key_env=cfg.api_key_env,
                                model=str(m), model_field="models")
    # vLLM's model list also names each model's root (the checkpoint it loaded) and max_model_len
    info = {m.id: m for m in endpoint._client(cfg.model_base_url, endpoint.api_key(cfg.api_key_env)).models.list().data}
    out = []
    for m in models:
        root = getattr(info.get(str(m)), "root", None)
        tok = cfg.tokenizer or (root if root and Path(root).is_dir() else None) or \
            (str(m) if Path(str(m)).is_dir() else None)
        if tok is None or not Path(tok).is_dir():
            raise EvalError(f"tokenizer={tok!r}: give the served model's checkpoint directory (lm-eval tokenizes "
                            f"requests to model_base_url itself; the server reports no local root for {str(m)!r})")
        out.append((str(m), tok, getattr(info.get(str(m)), "max_model_len", None)))
    return out


def endpoint_lm(cfg: BaseEvalConfig, name: str, tokenizer: str, max_len: int | None):
    """lm-eval's local-completions model on ``{model_base_url}/completions``: requests as token ids, the
    continuation's loglikelihood from the echoed prompt logprobs."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from .endpoint import api_key

    key = api_key(cfg.api_key_env)
    return LocalCompletionsAPI(base_url=f"{cfg.model_base_url.rstrip('/')}/completions", model=name,
                               tokenizer=tokenizer, tokenizer_backend="huggingface", tokenized_requests=True,
                               num_concurrent=cfg.concurrency, batch_size=cfg.batch_size, max_length=max_len or 2048,
                               seed=0, header={"Authorization": f"Bearer {key}"})


def results_table(out: dict) -> str:
    """Table 1 layout: a row per benchmark, a column per model (values x 100)."""
    models = list(out["results"])
    lines = ["| benchmark (shots) | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for task, s in out["tasks"].items():
        lines.append(f"| {s['label']} | " + " | ".join(f"{100 * out['results'][m][task]:.1f}" for m in models) + " |")
    return "\n".join(lines)
