"""Architecture search in a parameter budget (arXiv 2407.14679 sec. 2.4; ``minitron search``).

1. Enumerate candidate targets: hidden size, MLP size, (optionally) attention heads and depth, each
   within its maximum prune fraction, widths in multiples of ``multiple`` (the runtimes' tile sizes:
   by default 128 for >= 2048-wide models, 64 for >= 1024, 16 below), every one checked by the same validator
   ``minitron prune`` uses (:func:`trim.resolve_target`: GQA groups, transformers' divisibility rules).
2. Keep those whose analytic parameter count lies in ``[budget x (1 - tolerance), budget]``. Per
   (depth, heads) combination the one closest to the budget stands for it; ``top_k`` of these, spread
   over the depths, are scored.
3. Score: prune each (activation importance computed once and shared; depth by the LM-loss metric)
   and measure the validation LM loss; with ``distill_tokens`` also after a short distillation from
   the source model (the step ModelOpt's public search skips: a candidate's loss right after pruning
   does not always predict its loss after distillation, the paper's observation).

Output (``output``): ``search.json``, ``search.md`` (the ranked table) and ``best.yaml``, a
``minitron prune --config`` file with the winner's target.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from transformers import AutoConfig

from ..arch import count_parameters, family_of
from ..config import at_least, one_of
from ..data import DataConfig
from ..distill.run import DistillScriptConfig, run_distill
from ..distill.trainer import DistillationConfig
from ..lm_loss import validation_loss
from ..loading import resolve_model
from ..outputs import check_output, input_paths, write_checkpoint_atomically
from .config import PruneConfig
from .prune import run_prune
from .scoring import ImportanceConfig, run_importance
from .trim import PruneTarget, PruningConfigError, resolve_target

logger = logging.getLogger(__name__)

WIDTH_AXES = ("hidden_size", "intermediate_size", "num_attention_heads")


@dataclass
class SearchConfig:
    """Options of ``minitron search`` (data options come from DataConfig)."""

    model: str = field(default="smollm2-135m", metadata={"help": "alias, local checkpoint dir or Hub id"})
    budget: float | None = field(default=None, metadata={"help": "parameter budget: a fraction of the source's "
                                 "total parameters (<= 1, e.g. 0.5) or an absolute count (e.g. 4.5e9)"})
    output: str | None = field(default=None, metadata={"help": "directory for search.json/md and best.yaml"})
    max_width_prune: float = field(default=0.5, metadata={"help": "largest fraction of hidden/MLP/heads removed"})
    max_depth_prune: float = field(default=0.5, metadata={"help": "largest fraction of layers removed"})
    prune_heads: bool = field(default=False, metadata={"help": "also search attention heads (whole GQA "
                              "groups kept; the paper's Llama-3.1 recipe keeps all heads)"})
    count: str = field(default="total", metadata={"help": "what the budget counts: 'total' parameters, or "
                       "'active' ones (mixtures of experts: per token, only the experts it is routed to)"})
    prune_experts: bool = field(default=False, metadata={"help": "mixtures of experts: also search the number of "
                                "experts per layer (never below num_experts_per_tok)"})
    multiple: int | None = field(default=None, metadata={"help": "hidden/MLP sizes in multiples of this "
                                 "(default 128 for hidden >= 2048, 64 for >= 1024, else 16)"})
    depth_step: int = field(default=1, metadata={"help": "layer counts in steps of this"})
    tolerance: float = field(default=0.05, metadata={"help": "keep candidates within budget x (1 - tolerance)"})
    top_k: int = field(default=5, metadata={"help": "candidates to prune and score"})
    distill_tokens: int = field(default=0, metadata={"help": "> 0: also distil each candidate for about this "
                                "many tokens and rank by the loss after it"})
    importance: str = field(default="l2_mean", metadata={"help": "activation importance aggregation"})
    calib_samples: int = field(default=64, metadata={"help": "calibration sequences (shared by all candidates)"})
    val_samples: int = field(default=16, metadata={"help": "validation sequences (depth metric and scoring)"})
    seq_len: int = field(default=256, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass / per training step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "distillation LR of each candidate (cosine "
                                 "to a tenth)"})
    dtype: str = field(default="float32", metadata={"help": "calibration dtype"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ..."})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output directory"})

    def __post_init__(self):
        if self.budget is None:
            raise PruningConfigError("budget is required: a fraction of the source's parameters (e.g. 0.5) or a "
                                     "count (e.g. 4.5e9)")
        if self.budget <= 0:
            raise PruningConfigError(f"budget={self.budget} must be > 0")
        for name in ("max_width_prune", "max_depth_prune"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise PruningConfigError(f"{name}={v} must be in [0, 1)")
        if not 0 < self.tolerance < 1:
            raise PruningConfigError(f"tolerance={self.tolerance} must be in (0, 1)")
        at_least(self, ("top_k", "calib_samples", "val_samples", "seq_len", "batch_size", "depth_step"),
                 error=PruningConfigError)
        if self.multiple is not None and self.multiple < 1:
            raise PruningConfigError(f"multiple={self.multiple} must be >= 1")
        at_least(self, ("distill_tokens",), low=0, error=PruningConfigError)
        one_of("count", self.count, ("total", "active"), error=PruningConfigError)


def _default_multiple(hidden: int) -> int:
    return 128 if hidden >= 2048 else 64 if hidden >= 1024 else 16


def budget_params(cfg: SearchConfig, total: int) -> int:
    """The budget in parameters: a fraction of ``total`` (<= 1) or a count, below the source's ``total``."""
    n = int(cfg.budget * total) if cfg.budget <= 1 else int(cfg.budget)
    if n >= total:
        raise PruningConfigError(f"budget={cfg.budget} ({n:,} parameters) is not below the source's {total:,}")
    return n


def check_inputs(cfg: SearchConfig, data_cfg: DataConfig | None = None):
    """Output folder, source model and the options that depend on its family; returns (output, source folder,
    source config)."""
    out = check_output(cfg.output, "output", sources=input_paths(data_cfg, cfg), overwrite=cfg.overwrite,
                       error=PruningConfigError)
    src = resolve_model(cfg.model)
    check_output(cfg.output, "output", sources=[src, *input_paths(data_cfg, cfg)], overwrite=cfg.overwrite,
                 error=PruningConfigError)
    config = AutoConfig.from_pretrained(src)
    check_family(config, cfg)
    return out, src, config


def check_family(config, cfg: SearchConfig) -> None:
    """Options that need a mixture of experts, refused on a dense model by name; depth on a hybrid, refused."""
    family = family_of(config)
    kinds = sorted(set(family.layer_types(config)))
    if len(kinds) > 1 and cfg.max_depth_prune > 0:
        raise PruningConfigError(
            f"max_depth_prune={cfg.max_depth_prune}: model_type={config.model_type!r} mixes layer types "
            f"({', '.join(kinds)}), so a layer count alone does not fix the parameter count (it depends on which "
            f"layers are dropped); search width with max_depth_prune=0, and prune depth with `minitron prune` "
            f"(target num_hidden_layers or drop_layers)")
    if not family.is_moe:
        for name, bad in (("count", cfg.count == "active"), ("prune_experts", cfg.prune_experts)):
            if bad:
                raise PruningConfigError(f"{name}={getattr(cfg, name)!r} needs a mixture of experts; "
                                         f"model_type={config.model_type!r} is dense (every parameter is active)")


def _range(full: int, max_prune: float, step: int) -> list[int]:
    """Values from full down to ceil(full x (1 - max_prune)): full itself, then multiples of step."""
    low = math.ceil(full * (1 - max_prune))
    vals = {full} | {v for v in range(step * math.ceil(low / step), full, step) if v >= max(low, 1)}
    return sorted(vals, reverse=True)


def enumerate_candidates(config, cfg: SearchConfig, budget: int) -> tuple[list[dict], int]:
    """Valid targets within the budget, closest first; (candidates, number enumerated)."""
    family = family_of(config)
    m = cfg.multiple or _default_multiple(config.hidden_size)
    hiddens = _range(config.hidden_size, cfg.max_width_prune, m)
    mlps = _range(getattr(config, family.mlp_field), cfg.max_width_prune, m)
    E = family.num_experts(config)
    experts: list[int | None] = [None]
    if family.is_moe and cfg.prune_experts:  # counts in steps of E/16 (every count up to 16 experts)
        experts = [e for e in _range(E, cfg.max_width_prune, max(1, E // 16)) if e >= config.num_experts_per_tok]
    aliases = getattr(type(config), "attribute_map", {})
    G = config.num_key_value_heads
    if cfg.prune_heads:  # whole query heads per KV group: multiples of the group count
        heads = [h for h in _range(config.num_attention_heads, cfg.max_width_prune, G) if h % G == 0]
    else:
        heads = [config.num_attention_heads]
    depths = _range(config.num_hidden_layers, cfg.max_depth_prune, cfg.depth_step)
    # the family's own width axes (Nemotron-H: Mamba heads), each in multiples of its step
    own = {f: [v for v in _range(getattr(config, f), cfg.max_width_prune, step) if v % step == 0]
           for f, step in family.search_axes(config).items()}
    low = budget * (1 - cfg.tolerance)
    out, seen = [], 0
    base = config.to_dict()
    for L in depths:
        for H in heads:
            for h in hiddens:
                for i, e, extra in itertools.product(mlps, experts, itertools.product(*own.values())):
                    seen += 1
                    target = {"hidden_size": h, family.mlp_field: i, "num_attention_heads": H,
                              "num_hidden_layers": L, **dict(zip(own, extra))}
                    if e is not None:
                        target[family.experts_field] = e
                    n = count_parameters(_Cfg(base, {aliases.get(k, k): v for k, v in target.items()}))[cfg.count]
                    if not low <= n <= budget:
                        continue
                    try:
                        resolve_target(config, PruneTarget.from_dict(target))
                    except PruningConfigError:
                        continue
                    out.append({"target": target, "parameters": n})
    out.sort(key=lambda c: -c["parameters"])
    return out, seen


class _Cfg:
    """A config dict with some fields replaced, readable like a transformers config."""

    def __init__(self, base: dict, update: dict):
        self.__dict__.update(base)
        self.__dict__.update(update)

    def get(self, k, default=None):
        return self.__dict__.get(k, default)


def choose(candidates: list[dict], top_k: int, source_layers: int) -> list[dict]:
    """One candidate per (depth, heads), the closest to the budget; then ``top_k`` spread evenly over
    the depths (both extremes included), so that depth-heavy and width-heavy shapes are both scored."""
    best: dict[tuple, dict] = {}
    for c in candidates:  # sorted closest-first
        key = (c["target"]["num_hidden_layers"], c["target"]["num_attention_heads"])
        best.setdefault(key, c)
    reps = sorted(best.values(), key=lambda c: (-c["target"]["num_hidden_layers"], -c["parameters"]))
    if len(reps) <= top_k:
        return reps
    idx = sorted({round(j * (len(reps) - 1) / (top_k - 1)) for j in range(top_k)}) if top_k > 1 else [0]
    return [reps[i] for i in idx]


def _prune_target(target: dict, source) -> dict:
    """Only the fields that change (a shorter, clearer prune target)."""
    return {k: v for k, v in target.items() if v != getattr(source, k)}


def run_search(data_cfg: DataConfig, cfg: SearchConfig) -> dict:
    """Enumerate, choose, prune and score; returns the record written to ``cfg.output``."""
    t0 = time.time()
    out, src, config = check_inputs(cfg, data_cfg)
    total = count_parameters(config)[cfg.count]
    budget = budget_params(cfg, total)
    candidates, seen = enumerate_candidates(config, cfg, budget)
    if not candidates:
        raise PruningConfigError(
            f"no valid candidate within budget={budget:,} parameters (tolerance {cfg.tolerance}): widen "
            f"max_width_prune / max_depth_prune, lower multiple, or raise tolerance")
    chosen = choose(candidates, cfg.top_k, config.num_hidden_layers)
    logger.info("search: %d enumerated, %d within budget %s, %d to score", seen, len(candidates), f"{budget:,}",
                len(chosen))

    work = out.parent / f".{out.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        scores = work / "importance"
        run_importance(data_cfg, ImportanceConfig(model=str(src), output=str(scores), importance=cfg.importance,
                                                  calib_samples=cfg.calib_samples, seq_len=cfg.seq_len,
                                                  batch_size=cfg.batch_size, dtype=cfg.dtype, device=cfg.device))
        for k, c in enumerate(chosen):
            target = _prune_target(c["target"], config)
            c["prune_target"] = target
            dest = work / f"candidate{k}"
            rec = run_prune(data_cfg, PruneConfig(
                model=str(src), output=str(dest), target=target, scores=str(scores), calib_samples=cfg.calib_samples,
                val_samples=cfg.val_samples, seq_len=cfg.seq_len, batch_size=cfg.batch_size, dtype=cfg.dtype,
                device=cfg.device))
            c["dropped_layers"] = (rec.get("depth") or {}).get("dropped")
            c["loss_pruned"] = validation_loss(dest, data_cfg, cfg.val_samples, cfg.seq_len, cfg.batch_size)
            if cfg.distill_tokens:
                c["loss_distilled"], c["distill_steps"] = _short_distill(data_cfg, cfg, src, dest, work / f"d{k}")
            logger.info("candidate %d %s: %.1fM parameters, loss %.3f%s", k, target, c["parameters"] / 1e6,
                        c["loss_pruned"], f" -> {c['loss_distilled']:.3f}" if cfg.distill_tokens else "")
            shutil.rmtree(dest, ignore_errors=True)
        key = "loss_distilled" if cfg.distill_tokens else "loss_pruned"
        ranked = sorted(chosen, key=lambda c: c[key])
        record = {"model": str(cfg.model), "source_parameters": total, "count": cfg.count, "budget": budget,
                  "config": asdict(cfg), "mlp_field": family_of(config).mlp_field,
                  "experts_field": family_of(config).experts_field,
                  "data": asdict(data_cfg), "enumerated": seen, "within_budget": len(candidates),
                  "ranked_by": key, "candidates": ranked, "best": ranked[0]["prune_target"],
                  "wall_time_s": round(time.time() - t0, 1)}

        def write(tmp: Path) -> None:
            (tmp / "search.json").write_text(json.dumps(record, indent=1))
            (tmp / "search.md").write_text(results_table(record) + "\n")
            (tmp / "best.yaml").write_text(best_yaml(record, cfg))

        write_checkpoint_atomically(out, write)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def _short_distill(data_cfg, cfg: SearchConfig, teacher: Path, student: Path, out: Path) -> tuple[float, int]:
    steps = max(1, round(cfg.distill_tokens / (cfg.batch_size * cfg.seq_len)))
    args = DistillationConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
                              learning_rate=cfg.learning_rate, lr_scheduler_type="cosine_with_min_lr",
                              lr_scheduler_kwargs={"min_lr": cfg.learning_rate / 10}, warmup_steps=min(3, steps - 1),
                              logging_steps=max(1, steps // 5), eval_strategy="no", save_strategy="no",
                              report_to="none", seed=0)
    s = run_distill(data_cfg, DistillScriptConfig(student=str(student), teacher=str(teacher), seq_len=cfg.seq_len,
                                                  eval_samples=cfg.val_samples), args)
    loss = validation_loss(s["final_model"], data_cfg, cfg.val_samples, cfg.seq_len, cfg.batch_size)
    shutil.rmtree(out, ignore_errors=True)
    return loss, s["steps"]


def results_table(record: dict) -> str:
    distilled = record["ranked_by"] == "loss_distilled"
    mlp = record.get("mlp_field", "intermediate_size")
    what = "active parameters" if record.get("count") == "active" else "parameters"
    lines = [f"Budget {record['budget']:,} {what} ({record['budget'] / record['source_parameters']:.0%} of "
             f"{record['source_parameters']:,}); {record['enumerated']:,} targets enumerated, "
             f"{record['within_budget']:,} valid within the budget, {len(record['candidates'])} scored; ranked by "
             f"{'validation loss after distillation' if distilled else 'validation loss after pruning'}.", "",
             f"| rank | layers | hidden | MLP | heads | {what} | loss after pruning |"
             + (" loss after distillation |" if distilled else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if distilled else "")]
    for r, c in enumerate(record["candidates"], 1):
        t = c["target"]
        experts = t.get(record.get("experts_field") or "", None)
        mamba = f" (+ {t['mamba_num_heads']} Mamba)" if "mamba_num_heads" in t else ""
        lines.append(f"| {r} | {t['num_hidden_layers']} | {t['hidden_size']} | {t[mlp]}"
                     f"{f' x {experts} experts' if experts else ''} | "
                     f"{t['num_attention_heads']}{mamba} | {c['parameters'] / 1e6:,.1f}M | {c['loss_pruned']:.3f} |"
                     + (f" {c['loss_distilled']:.3f} |" if distilled else ""))
    lines += ["", f"Best: `minitron prune --config best.yaml --output DIR` (target {record['best']})."]
    return "\n".join(lines)


def best_yaml(record: dict, cfg: SearchConfig) -> str:
    doc = {"model": cfg.model, "target": record["best"], "importance": cfg.importance,
           "calib_samples": cfg.calib_samples, "seq_len": cfg.seq_len, "val_samples": cfg.val_samples,
           **{k: v for k, v in record["data"].items() if v is not None}}
    return ("# minitron search winner: minitron prune --config best.yaml --output DIR\n"
            + yaml.safe_dump(doc, sort_keys=False))
