"""Base-model benchmarks through LM Evaluation Harness, teacher vs students (``minitron eval base``).

The paper's settings (arXiv 2408.11796 Table 1) are :data:`PAPER_TASKS`; each task runs with its own
few-shot count, the models one after another on the same tasks, and the results land in one JSON
and a markdown table laid out like Table 1 (a row per benchmark, a column per model). Task data
comes from the Hub through lm-eval; offline, use local task YAML (``tasks_dir``) or the built-in
``pydoc_continuation`` (:mod:`.harness`). HumanEval/MBPP pass@1 run through :mod:`.code`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

    from ..export import check_checkpoint
    from ..models import load_model, load_tokenizer, resolve_model

    if not models:
        raise EvalError("models: name at least one checkpoint (the first is the teacher column)")
    if cfg.limit is not None and cfg.limit <= 0:
        raise EvalError(f"limit={cfg.limit} must be > 0")
    names = [str(m) for m in models] if names is None else list(names)
    paths = [check_checkpoint(resolve_model(m), field="models") for m in models]
    manager = task_manager(cfg.tasks_dir)
    check_tasks(cfg.tasks, manager)  # before any model loads
    def task_limit(task):  # --limit, else the paper's per-task share (XLSum: 20%)
        lim = cfg.limit if cfg.limit is not None else PAPER_TASKS.get(task, (None,) * 4)[3]
        return int(lim) if lim is not None and lim >= 1 else lim
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results, rows = {}, []
    for name, path in zip(names, paths):
        model = load_model(path, device=device, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
        tok = load_tokenizer(path)
        results[name] = {}
        for task in cfg.tasks:
            shots, metric, _ = _settings(task, cfg)
            t0 = time.time()
            r = evaluate_model(model, tok, [task], num_fewshot=shots, limit=task_limit(task), batch_size=cfg.batch_size,
                               manager=manager)
            results[name][task] = score(r, task, metric)
            logger.info("%s %s (%s-shot): %s = %.4f in %.0f s", name, task, shots, metric, results[name][task],
                        time.time() - t0)
        del model
    out = {"config": asdict(cfg), "tasks": {t: dict(zip(("num_fewshot", "metric", "label"), _settings(t, cfg)))
                                            for t in cfg.tasks}, "results": results}
    if cfg.output:
        d = Path(cfg.output)
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps(out, indent=1))
        (d / "results.md").write_text(results_table(out) + "\n")
    return out


def results_table(out: dict) -> str:
    """Table 1 layout: a row per benchmark, a column per model (values x 100)."""
    models = list(out["results"])
    lines = ["| benchmark (shots) | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for task, s in out["tasks"].items():
        lines.append(f"| {s['label']} | " + " | ".join(f"{100 * out['results'][m][task]:.1f}" for m in models) + " |")
    return "\n".join(lines)
