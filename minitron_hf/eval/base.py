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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import endpoint
from .harness import check_tasks, evaluate_model, score, task_manager
from ..config import at_least
from ..loading import load_model, load_tokenizer, resolve_model
from ..model_files import check_checkpoint
from .suite import EvalError, ServedModelOptions, Suite

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
class BaseEvalConfig(ServedModelOptions):
    """Options of ``minitron eval base`` (and those of :class:`.suite.ServedModelOptions`: with model_base_url,
    lm-eval's local-completions model on that server; loglikelihood tasks need prompt logprobs, echo + logprobs,
    which vLLM returns)."""

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
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer (a checkpoint directory) for model_base_url requests, which go through lm-eval's "
                "local-completions model: loglikelihood tasks need the server to return prompt logprobs (echo + "
                "logprobs), as vLLM does (default: the served model's root directory, as the server reports it)"})
    output: str | None = field(default=None, metadata={"help": "directory for results.json and results.md"})

    def __post_init__(self):
        super().__post_init__()
        if not self.tasks:
            raise EvalError(f"tasks={self.tasks!r}: name at least one lm-eval task")
        if self.limit is not None and self.limit <= 0:
            raise EvalError(f"limit={self.limit} must be > 0 (a count, or a fraction < 1; unset: every example)")
        at_least(self, ("batch_size",), error=EvalError)
        at_least(self, ("num_fewshot",), low=0, optional=("num_fewshot",), error=EvalError)


def _settings(task: str, cfg: BaseEvalConfig) -> tuple[int | None, str, str]:
    """(few-shot count, metric, row label) of a task under ``cfg``."""
    paper_shots, metric, label, _ = PAPER_TASKS.get(task, (None, cfg.metric or "acc", None, None))
    shots = cfg.num_fewshot if cfg.num_fewshot is not None else paper_shots
    if label is None or shots != paper_shots:
        label = f"{task} ({'default' if shots is None else shots})"
    return shots, metric, label


class BaseSuite(Suite):
    """Every model on every lm-eval task (lm-eval generates and scores in one call: ``generate`` keeps its raw
    results, ``score`` picks each task's metric)."""

    name = "base"
    help = "LM Evaluation Harness tasks, the paper's Table 1 settings"
    config_class = BaseEvalConfig

    @staticmethod
    def table(out: dict) -> str:
        return results_table(out)

    def check(self, models, names) -> list:
        """Checkpoint directories, or (model_base_url) (served name, tokenizer directory, max_model_len) of each
        model; the task names against lm-eval's index."""
        cfg = self.cfg
        refs = served_models(cfg, models) if cfg.model_base_url else \
            [check_checkpoint(resolve_model(m), field="models") for m in models]
        self.manager = task_manager(cfg.tasks_dir)
        check_tasks(cfg.tasks, self.manager)  # before any model loads
        return refs

    def _limit(self, task):  # limit, else the paper's per-task share (XLSum: 20%)
        lim = self.cfg.limit if self.cfg.limit is not None else PAPER_TASKS.get(task, (None,) * 4)[3]
        return int(lim) if lim is not None and lim >= 1 else lim

    def generate(self, model, name: str) -> dict:
        """lm-eval's results of every task on one model: {task: (results, seconds)}."""
        cfg = self.cfg
        if cfg.model_base_url:
            loaded = tok = None
            lm = endpoint_lm(cfg, *model)
        else:
            device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
            loaded = load_model(model, device=device,
                                dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
            tok, lm = load_tokenizer(model), None
        out = {}
        for task in cfg.tasks:
            shots, _, _ = _settings(task, cfg)
            t0 = time.time()
            out[task] = (evaluate_model(loaded, tok, [task], num_fewshot=shots, limit=self._limit(task),
                                        batch_size=cfg.batch_size, manager=self.manager, lm=lm), time.time() - t0)
        return out

    def score(self, name: str, outputs: dict) -> dict:
        res = {}
        for task, (r, seconds) in outputs.items():
            shots, metric, _ = _settings(task, self.cfg)
            res[task] = score(r, task, metric)
            logger.info("%s %s (%s-shot): %s = %.4f in %.0f s", name, task, shots, metric, res[task], seconds)
        return res

    def summary(self) -> dict:
        return {"tasks": {t: dict(zip(("num_fewshot", "metric", "label"), _settings(t, self.cfg)))
                          for t in self.cfg.tasks}}


def run_base_eval(models, cfg: BaseEvalConfig, names=None) -> dict:
    """Every model on every task; {"config", "tasks", "results": {model: {task: value}}}."""
    return BaseSuite(cfg).run(models, names)


def served_models(cfg: BaseEvalConfig, models) -> list[tuple[str, str, int | None]]:
    """(served name, tokenizer directory, max_model_len) of each model at ``cfg.model_base_url``; raises
    before any evaluation when the server does not answer, does not serve a model, or no tokenizer is found."""
    for m in models:
        endpoint.check_endpoint(cfg.model_base_url, field="model_base_url", api_key_env=cfg.model_api_key_env,
                                model=str(m), model_field="models")
    # vLLM's model list also names each model's root (the checkpoint it loaded) and max_model_len
    client = endpoint.client(cfg.model_base_url, endpoint.api_key(cfg.model_api_key_env))
    info = {m.id: m for m in client.models.list().data}
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
    from lm_eval.models.openai_completions import LocalCompletionsAPI  # the optional `eval` extra

    key = endpoint.api_key(cfg.model_api_key_env)
    return LocalCompletionsAPI(base_url=f"{cfg.model_base_url.rstrip('/')}/completions", model=name,
                               tokenizer=tokenizer, tokenizer_backend="huggingface", tokenized_requests=True,
                               num_concurrent=cfg.model_concurrency, batch_size=cfg.batch_size,
                               max_length=max_len or 2048, seed=0, header={"Authorization": f"Bearer {key}"})


def results_table(out: dict) -> str:
    """Table 1 layout: a row per benchmark, a column per model (values x 100)."""
    models = list(out["results"])
    lines = ["| benchmark (shots) | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for task, s in out["tasks"].items():
        lines.append(f"| {s['label']} | " + " | ".join(f"{100 * out['results'][m][task]:.1f}" for m in models) + " |")
    return "\n".join(lines)
