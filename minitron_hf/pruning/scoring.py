"""The calibration runners: importance scores and depth scans of a checkpoint, in memory or layer by layer.

``minitron importance`` (:func:`run_importance`), ``minitron prune`` and the pipeline's importance stage
(:func:`compute_scores`) run the passes here; all three write what they scored with :func:`write_scores`, which
``--scores`` reads back. The scores themselves (:class:`~.importance.Importance`, the reducers, the in-memory pass)
are :mod:`.importance`; the depth scans :mod:`.depth`; the layer-by-layer passes :mod:`.sequential`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig

from ..compat import check_vocab
from ..data import DataConfig, load_blocks
from ..distributed import process_state
from ..eval.harness import check_tasks, task_manager
from ..loading import load_model, load_tokenizer, parse_device, resolve_model
from ..outputs import check_output, input_paths, write_checkpoint_atomically
from .config import DTYPES, PruneConfig, ResolvedTarget, check_task_sequential
from .depth import LayerImportance, is_task_metric, layer_importance
from .importance import Importance, estimate_importance, parse_aggregation, plot_importance
from .layerwise import LayerwiseModel
from .sequential import SequentialOptions, SequentialPlan, calibrate, decide_sequential
from .sequential import check_inputs as check_sequential_inputs
from .trim import PruningConfigError


@dataclass
class ImportanceConfig(SequentialOptions):
    """Options of ``minitron importance``: scores and plots, no pruning."""

    model: str = field(default="smollm2-135m", metadata={"help": "alias, local checkpoint dir or Hub id"})
    output: str | None = field(default=None, metadata={"help": "directory for importance.safetensors/json and PNGs"})
    importance: str = field(default="l2_mean", metadata={"help": "'<batch>_<seq>' reducers (mean|l2|l1|max)"})
    calib_samples: int = field(default=1024, metadata={"help": "calibration sequences (paper: 1024)"})
    seq_len: int = field(default=512, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    block_size: int = field(default=0, metadata={"help": "also score removing each contiguous block of this "
                            "many layers (LM loss and block influence); 0 = skip"})
    val_samples: int = field(default=32, metadata={"help": "validation sequences for the layer LM-loss scan"})
    dtype: str = field(default="float32", metadata={"help": "forward dtype", "choices": list(DTYPES)})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ..."})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output directory"})

    def __post_init__(self):
        super().__post_init__()
        parse_aggregation(self.importance)


def check_inputs(cfg: ImportanceConfig, data_cfg: DataConfig | None = None) -> tuple[Path, Path]:
    """Output folder, source model and the block size against its depth; returns (output, source folder)."""
    check_output(cfg.output, "output", sources=input_paths(data_cfg, cfg), overwrite=cfg.overwrite,
                 error=PruningConfigError)
    check_sequential_inputs(cfg)
    src = resolve_model(cfg.model)
    out = check_output(cfg.output, "output", sources=[src, *input_paths(data_cfg, cfg)], overwrite=cfg.overwrite,
                       error=PruningConfigError)
    L = AutoConfig.from_pretrained(src).num_hidden_layers
    if cfg.block_size and not 1 <= cfg.block_size < L:
        raise PruningConfigError(f"block_size={cfg.block_size} must be between 1 and {L - 1}")
    return out, src


def write_scores(folder: Path, imp: Importance | None, li: LayerImportance | None, title: str) -> None:
    """What a calibration scored, into ``folder``: ``importance.safetensors``/``.json`` and their plot, the depth
    scan's ``layer_importance.json``/``.png`` (the layout ``--scores`` reads back)."""
    if imp is not None:
        imp.save(folder)
        plot_importance(imp, Path(folder) / "importance.png", title=title)
    if li is not None:
        li.save(folder)


def offload_dir(cfg) -> Path:
    """Where the disk activation cache goes: ``offload_dir``, else beside the output (a disk the user chose)."""
    if cfg.offload_dir:
        return Path(cfg.offload_dir).expanduser()
    return Path(cfg.output).expanduser().resolve().parent if cfg.output else Path(tempfile.gettempdir())


def sequential_scores(cfg, src: Path, calib, val, aggregation: str | None, influence_block: int, loss_block: int,
                      device, progress: bool = True) -> tuple[Importance | None, LayerImportance | None, list]:
    """Width importance and the depth scans, one layer at a time (:mod:`.sequential`); ``cfg`` carries the
    :class:`SequentialOptions` and ``dtype``/``batch_size``. Returns (scores, depth scores, cache facts)."""
    plan = SequentialPlan(aggregation=aggregation, influence_block=influence_block, loss_block=loss_block,
                          batch_size=cfg.batch_size, activation_cache=cfg.activation_cache,
                          offload_dir=offload_dir(cfg), progress=progress,
                          memory_limit=int(cfg.memory_limit_gb * 2 ** 30) if cfg.memory_limit_gb else None)
    out = calibrate(LayerwiseModel(src, DTYPES[cfg.dtype], device), calib, val, plan)
    li = None
    if influence_block or loss_block:
        li = LayerImportance(block_size=influence_block or loss_block, baseline_loss=out.get("baseline_loss"),
                             lm_loss=out.get("lm_loss", []), block_influence=out.get("block_influence", []),
                             layer_influence=out.get("layer_influence", []))
    return out.get("importance"), li, out["cache"]


def _shard(blocks, state):
    return blocks if blocks is None or state.num_processes == 1 else blocks[state.process_index:: state.num_processes]


def compute_scores(data_cfg: DataConfig, cfg: PruneConfig, plan: ResolvedTarget, tokenizer, width_scores: bool,
                   state=None, device=None, info: dict | None = None):
    """The calibration pass(es) the resolved target ``plan`` needs: activation importance of every width axis (when
    ``width_scores``) and the depth scan of contiguous blocks of ``plan.depth_block`` layers (when > 0) under
    ``cfg.depth_metric``.

    Returns (Importance | None, LayerImportance | None, calibration blocks | None). Data is loaded and
    checked before the model, so a too-small dataset fails before any forward pass. Under
    ``accelerate launch`` each process scores its shard and the sums are all-reduced. A model that does not fit
    the device (or ``cfg.sequential``) is calibrated one layer at a time; ``info`` receives how.
    """
    src, depth_k = plan.source, plan.depth_block
    check_vocab(src, tokenizer, cfg.model, error=PruningConfigError)  # before data or weights: ids fit the model
    state = state or process_state()
    device = device if device is not None else (state.device if state.num_processes > 1 else parse_device(cfg.device))
    by_influence = depth_k > 0 and cfg.depth_metric == "block-influence"
    by_task = depth_k > 0 and is_task_metric(cfg.depth_metric)
    if by_task:
        if state.num_processes > 1:
            raise PruningConfigError("depth_metric=task:... runs in a single process; launch without accelerate")
        check_tasks([cfg.depth_metric[len("task:"):]], task_manager(cfg.tasks_dir))  # before loading weights
    seq = (width_scores or depth_k > 0) and decide_sequential(cfg, src, DTYPES[cfg.dtype], device)
    if seq and by_task:
        check_task_sequential(cfg)
    if info is not None:
        info["sequential"] = bool(seq)
    calib = load_blocks(data_cfg, tokenizer, "calibration", cfg.seq_len, cfg.calib_samples) \
        if width_scores or by_influence else None
    val = load_blocks(data_cfg, tokenizer, "validation", cfg.seq_len, cfg.val_samples) \
        if depth_k > 0 and not by_influence and not by_task else None
    calib, val = _shard(calib, state), _shard(val, state)
    if not width_scores and depth_k <= 0:
        return None, None, calib
    if seq:
        imp, li, cache = sequential_scores(cfg, src, calib, val, cfg.importance if width_scores else None,
                                           depth_k if by_influence else 0,
                                           depth_k if depth_k > 0 and not by_influence else 0, device,
                                           progress=state.is_main_process)
        if imp is not None:
            imp.meta.update({"model": str(cfg.model), "seq_len": cfg.seq_len, "sequential": True})
        if info is not None:
            info["activation_cache"] = cache
        return imp, li, calib
    model = load_model(src, dtype=DTYPES[cfg.dtype], device=device)
    li = imp = None
    if depth_k > 0:
        li = layer_importance(model, calib if by_influence else val, depth_k, metrics=(cfg.depth_metric,),
                              batch_size=cfg.batch_size, progress=state.is_main_process, tokenizer=tokenizer,
                              task_options=dict(metric=cfg.depth_task_score, num_fewshot=cfg.depth_task_fewshot,
                                                limit=cfg.depth_task_limit, include_path=cfg.tasks_dir,
                                                noncontiguous=cfg.depth_noncontiguous))
    if width_scores:
        imp = estimate_importance(model, calib, cfg.importance, batch_size=cfg.batch_size,
                                  progress=state.is_main_process)
        imp.meta.update({"model": str(cfg.model), "seq_len": cfg.seq_len})
    return imp, li, calib


def run_importance(data_cfg: DataConfig, cfg: ImportanceConfig) -> dict:
    """``minitron importance``: scores (and with ``block_size`` the depth scans) of ``cfg.model``, written with their
    plots to ``cfg.output``."""
    out, src = check_inputs(cfg, data_cfg)
    device = parse_device(cfg.device)
    seq = decide_sequential(cfg, src, DTYPES[cfg.dtype], device)
    tokenizer = load_tokenizer(src)  # checks that its ids fit the model's vocabulary
    calib = load_blocks(data_cfg, tokenizer, "calibration", cfg.seq_len, cfg.calib_samples)
    val = load_blocks(data_cfg, tokenizer, "validation", cfg.seq_len, cfg.val_samples) if cfg.block_size else None
    t0 = time.time()
    li = None
    if seq:  # both depth metrics on the validation blocks, as in memory
        imp, _, cache = sequential_scores(cfg, src, calib, None, cfg.importance, 0, 0, device)
        if cfg.block_size:
            _, li, more = sequential_scores(cfg, src, val, val, None, cfg.block_size, cfg.block_size, device)
            cache += more
        imp.meta["activation_cache"] = cache
    else:
        model = load_model(src, dtype=DTYPES[cfg.dtype], device=device)
        imp = estimate_importance(model, calib, cfg.importance, batch_size=cfg.batch_size)
        if cfg.block_size:
            li = layer_importance(model, val, cfg.block_size, batch_size=cfg.batch_size)
    imp.meta.update({"model": str(cfg.model), "seq_len": cfg.seq_len, "sequential": bool(seq),
                     "seconds": round(time.time() - t0, 1)})
    result = {"importance": imp.meta}
    if li is not None:
        result["layers"] = {"best_block_lm_loss": li.best_block("lm-loss"),
                            "best_block_influence": li.best_block("block-influence")}
    write_checkpoint_atomically(out, lambda tmp: write_scores(tmp, imp, li, f"{cfg.model} ({cfg.importance})"))
    return result
