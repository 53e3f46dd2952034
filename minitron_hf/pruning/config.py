"""The options of ``minitron prune`` and their checks: values when the config is made, inputs before any weights.

:class:`PruneConfig` turns its ``target`` into a :class:`~.trim.PruneTarget` when it is made (a mapping from YAML or
``--target KEY=VALUE``); :func:`check_inputs` checks what needs files (output folder, source config, tokenizer,
saved scores) and returns the target resolved against the source model once, a :class:`ResolvedTarget` that the
scoring pass, the depth scan and every pruning step take.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoConfig, PretrainedConfig

from ..arch import count_parameters, family_of
from ..config import ConfigError, at_least, one_of
from ..data import DataConfig
from ..loading import parse_device, resolve_model
from ..outputs import check_output, dir_size, input_paths
from .depth import DepthError, check_metric, is_task_metric
from .importance import Importance, parse_aggregation
from .sequential import SequentialOptions
from .sequential import check_inputs as check_sequential_inputs
from .trim import PruneTarget, PruningConfigError, has_tokenizer, resolve_target

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PruneConfig(SequentialOptions):
    """Options of ``minitron prune`` / ``recipes/prune.py`` (data options come from DataConfig; the
    larger-than-memory options from :class:`~minitron_hf.pruning.sequential.SequentialOptions`)."""

    model: str = field(default="smollm2-135m", metadata={"help": "alias 'smollm2-135m', a local checkpoint dir or a "
                                                         "Hub id"})
    output: str | None = field(default=None, metadata={"help": "directory to write the pruned checkpoint to"})
    target: PruneTarget = field(default_factory=PruneTarget, metadata={"help": "KEY=VALUE: hidden_size, "
                                "intermediate_size, num_attention_heads, num_key_value_heads, num_hidden_layers, "
                                "drop_layers; mixtures of experts also num_local_experts (Mixtral) / num_experts, "
                                "moe_intermediate_size (Qwen3-MoE); Nemotron-H also mamba_num_heads, mamba_head_dim "
                                "(repeatable)"})
    importance: str = field(default="l2_mean", metadata={"help": "'<batch>_<seq>' reducers (mean|l2|l1|max), "
                            "paper default l2_mean; or 'random' (ablation)", "scores": True})
    scores: str | None = field(default=None, metadata={"help": "reuse scores saved by `minitron importance` "
                               "(skips calibration)"})
    calib_samples: int = field(default=1024, metadata={"help": "calibration sequences (paper: 1024)", "scores": True})
    seq_len: int = field(default=512, metadata={"help": "tokens per calibration/validation sequence", "scores": True})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass", "scores": True})
    depth_metric: str = field(default="lm-loss", metadata={"help": "how to pick layers when only "
                              "num_hidden_layers is given: lm-loss (Fig. 7), block-influence, or "
                              "task:<lm-eval task> (downstream accuracy, Fig. 8; e.g. task:winogrande)",
                              "scores": True})
    depth_task_fewshot: int | None = field(default=None, metadata={"help": "task: metric: few-shot examples "
                                           "(paper: Winogrande 5-shot; default: the task's)", "scores": True})
    depth_task_limit: int | None = field(default=None, metadata={"help": "task: metric: evaluate only the first "
                                         "N examples per candidate", "scores": True})
    depth_task_score: str = field(default="acc", metadata={"help": "task: metric: which lm-eval metric "
                                  "ranks the blocks (acc, acc_norm, ...)", "scores": True})
    depth_noncontiguous: bool = field(default=True, metadata={"help": "task: metric: also score every single "
                                      "layer and the non-contiguous choice (the paper's comparison)", "scores": True})
    tasks_dir: str | None = field(default=None, metadata={"help": "folder of local lm-eval task YAML files "
                                  "(the Hub's task data is unreachable offline)", "scores": True})
    val_samples: int = field(default=32, metadata={"help": "validation sequences for the lm-loss depth metric",
                                                   "scores": True})
    iterative_steps: int = field(default=1, metadata={"help": "1 = single-shot (paper); N > 1 prunes in N "
                                 "steps, re-estimating importance after each"})
    merge_pruned_heads: bool = field(default=False, metadata={"help": "add pruned heads' residual into kept "
                                     "heads (arXiv 2407.14679 sec. 2.3) instead of plain removal"})
    dtype: str = field(default="float32", metadata={"help": "dtype for calibration forward passes; the output "
                       "keeps the source's dtype", "choices": list(DTYPES), "scores": True})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda when available)",
                                                       "scores": True})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output directory"})
    max_shard_size_mb: int = field(default=2048, metadata={"help": "largest output safetensors shard"})

    def __post_init__(self):
        super().__post_init__()
        # the target is parsed once, here: a mapping from YAML / --target KEY=VALUE, or a PruneTarget as is
        if self.target is None or isinstance(self.target, dict):
            self.target = PruneTarget.from_dict(self.target)
        elif not isinstance(self.target, PruneTarget):
            raise ConfigError(f"target={self.target!r} must be a mapping")
        if self.importance != "random":
            parse_aggregation(self.importance)
        try:
            check_metric(self.depth_metric)
        except DepthError as e:
            raise PruningConfigError(str(e)) from None
        if self.depth_task_limit is not None and self.depth_task_limit < 1:
            raise PruningConfigError(f"depth_task_limit={self.depth_task_limit} must be >= 1 (or unset for all "
                                     f"examples)")
        if self.depth_task_fewshot is not None and self.depth_task_fewshot < 0:
            raise PruningConfigError(f"depth_task_fewshot={self.depth_task_fewshot} must be >= 0")
        at_least(self, ("calib_samples", "seq_len", "batch_size", "val_samples", "iterative_steps"),
                 error=PruningConfigError)
        one_of("dtype", self.dtype, DTYPES, error=PruningConfigError)
        at_least(self, ("max_shard_size_mb",), error=PruningConfigError)

    @classmethod
    def scoring_fields(cls) -> tuple[str, ...]:
        """The options the calibration pass (importance scores, depth scan) depends on: those marked
        ``metadata={..., "scores": True}``. The exact width target is not one of them: scores rank every channel of
        the source, so a new width target reuses them (``minitron run`` keys its importance stage on these)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("scores"))


@dataclass(frozen=True)
class ResolvedTarget:
    """A :class:`~.trim.PruneTarget` checked against its source model: what the scoring pass and the pruning steps
    take, so that the target is resolved once (not to be confused with :class:`~.trim.PrunePlan`, the kept indices
    that slicing reads once the scores are known)."""

    source: Path  # the source checkpoint folder
    config: PretrainedConfig  # the source's config
    target: PruneTarget
    new_config: dict  # the pruned config (per-layer fields None until the kept layers are known)
    drop: list[int] | None  # the layers to drop when given; None = the depth scan picks them (or depth is kept)

    @property
    def width(self) -> dict:
        """The given width fields, even those equal to the source's: channels are ranked and reordered."""
        return self.target.width_fields()

    @property
    def depth_block(self) -> int:
        """How many contiguous layers the depth scan removes: 0 when the layers to drop are given or depth is kept."""
        return self.config.num_hidden_layers - self.new_config["num_hidden_layers"] if self.drop is None else 0

    def with_drop(self, drop: list[int]) -> "ResolvedTarget":
        """The same target with the layers the depth scan chose (their count is the target's depth already)."""
        return dataclasses.replace(self, drop=list(drop))


def resolve(cfg: PruneConfig, src: Path | None = None) -> ResolvedTarget:
    """``cfg.target`` against the source model's config (read from ``src`` or ``cfg.model``; no weights)."""
    src = src if src is not None else resolve_model(cfg.model)
    config = AutoConfig.from_pretrained(src)
    family_of(config)
    if not cfg.target.to_dict():
        raise PruningConfigError("target is empty: give at least one KEY=VALUE, e.g. --target hidden_size=432")
    new_config, drop = resolve_target(config, cfg.target)
    return ResolvedTarget(src, config, cfg.target, new_config, drop)


def check_inputs(cfg: PruneConfig, data_cfg: DataConfig | None = None) -> ResolvedTarget:
    """Every check that needs files but no weights (output folder, source model and tokenizer, the target against
    the source's config, saved scores, disk space); returns the resolved target."""
    out = check_output(cfg.output, "output", sources=input_paths(data_cfg, cfg), overwrite=cfg.overwrite,
                       error=PruningConfigError)
    check_sequential_inputs(cfg)
    if cfg.tasks_dir is not None and not Path(cfg.tasks_dir).is_dir():
        raise PruningConfigError(f"tasks_dir={cfg.tasks_dir!r}: no such directory (a folder of lm-eval task YAML "
                                 f"files)")
    parse_device(cfg.device)  # a clear error for a device name torch does not know, or one this machine lacks
    src = resolve_model(cfg.model)
    if not has_tokenizer(src):
        raise PruningConfigError(f"model={cfg.model!r}: no tokenizer files in {src}; a pruned model must carry "
                                 f"its tokenizer (save one with tokenizer.save_pretrained)")
    plan = resolve(cfg, src)
    config = plan.config
    if cfg.sequential and plan.depth_block:
        check_task_sequential(cfg)
    if cfg.seq_len > getattr(config, "max_position_embeddings", cfg.seq_len):
        raise PruningConfigError(f"seq_len={cfg.seq_len} exceeds the model's max_position_embeddings="
                                 f"{config.max_position_embeddings}")
    if out.resolve() == src.resolve():
        raise PruningConfigError(f"output={cfg.output!r} is the source model's own directory")
    if cfg.scores:  # reused scores must load and fit this model now, not after calibration
        Importance.load(cfg.scores).check_matches(config)
    # the pruned weights, in the source's dtype: the source's size scaled by the parameter ratio
    ratio = count_parameters_ratio(config, plan.new_config)
    check_output(cfg.output, "output", sources=[src, *input_paths(data_cfg, cfg)], overwrite=cfg.overwrite,
                 need_bytes=int(dir_size(src) * ratio), error=PruningConfigError)
    return plan


def count_parameters_ratio(config, new_config: dict) -> float:
    # per-layer fields are None until the layers are chosen: the source's then (Nemotron-H's count scales its layer
    # pattern to the target's depth)
    new = SimpleNamespace(**{**config.to_dict(), **{k: v for k, v in new_config.items() if v is not None}})
    return count_parameters(new)["total"] / max(count_parameters(config)["total"], 1)


def check_task_sequential(cfg) -> None:
    """A ``task:`` depth metric refused where calibration runs layer by layer."""
    if is_task_metric(cfg.depth_metric):
        raise PruningConfigError(
            f"depth_metric={cfg.depth_metric!r} needs the whole model in memory (lm-eval runs the full model for every "
            f"candidate block), but calibration runs layer by layer here (sequential); use depth_metric=lm-loss or "
            f"block-influence, which run layer by layer, or give drop_layers explicitly")
