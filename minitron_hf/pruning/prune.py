"""The pruning stage: settings, checks before work, importance, plan, trim, output.

``run_prune`` is what ``minitron prune`` and ``recipes/prune.py`` call. Everything that can be
checked from config files alone (target, options, output directory, tokenizer) is checked before a
model is loaded; data is checked before a forward pass.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..arch import family_of
from ..outputs import check_output, input_paths
from ..data import DataConfig, load_blocks
from ..distributed import process_state
from ..loading import load_model, resolve_model
from ..outputs import write_checkpoint_atomically
from .depth import DepthError, LayerImportance, check_metric, is_task_metric, layer_importance
from .importance import (Importance, estimate_importance, parse_aggregation, plot_importance,
                         random_importance)
from .sequential import LayerwiseModel, SequentialOptions, SequentialPlan, calibrate, decide_sequential
from .trim import (PruneTarget, PruningConfigError, copy_aux_files, has_tokenizer, kept_layers_config, make_plan,
                   parameter_counts, resolve_target, trim_checkpoint)

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PruneConfig(SequentialOptions):
    """Options of ``minitron prune`` / ``recipes/prune.py`` (data options come from DataConfig; the
    larger-than-memory options from :class:`~minitron_hf.pruning.sequential.SequentialOptions`)."""

    model: str = field(default="smollm2-135m", metadata={"help": "alias 'smollm2-135m', a local checkpoint dir or a Hub id"})
    output: str | None = field(default=None, metadata={"help": "directory to write the pruned checkpoint to"})
    target: dict = field(default_factory=dict, metadata={"help": "KEY=VALUE: hidden_size, intermediate_size, "
                         "num_attention_heads, num_key_value_heads, num_hidden_layers, drop_layers; mixtures of experts "
                         "also num_local_experts (Mixtral) / num_experts, moe_intermediate_size (Qwen3-MoE); "
                         "Nemotron-H also mamba_num_heads, mamba_head_dim (repeatable)"})
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
        self.target = dict(self.target or {})

    @classmethod
    def scoring_fields(cls) -> tuple[str, ...]:
        """The options the calibration pass (importance scores, depth scan) depends on: those marked
        ``metadata={..., "scores": True}``. The exact width target is not one of them: scores rank every channel of
        the source, so a new width target reuses them (``minitron run`` keys its importance stage on these)."""
        import dataclasses

        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("scores"))


def _device(name: str | None) -> torch.device:
    from ..loading import parse_device

    return parse_device(name)


def validate(cfg: PruneConfig, data_cfg: DataConfig | None = None):
    """All checks that need no weights: returns (source dir, config, PruneTarget, new config, drop)."""
    from transformers import AutoConfig

    out = check_output(cfg.output, "output", sources=input_paths(data_cfg, cfg), overwrite=cfg.overwrite,
                       error=PruningConfigError)
    cfg.check_sequential_options()
    if cfg.importance != "random":
        parse_aggregation(cfg.importance)
    try:
        check_metric(cfg.depth_metric)
    except DepthError as e:
        raise PruningConfigError(str(e)) from None
    if cfg.depth_task_limit is not None and cfg.depth_task_limit < 1:
        raise PruningConfigError(f"depth_task_limit={cfg.depth_task_limit} must be >= 1 (or unset for all examples)")
    if cfg.depth_task_fewshot is not None and cfg.depth_task_fewshot < 0:
        raise PruningConfigError(f"depth_task_fewshot={cfg.depth_task_fewshot} must be >= 0")
    if cfg.tasks_dir is not None and not Path(cfg.tasks_dir).is_dir():
        raise PruningConfigError(f"tasks_dir={cfg.tasks_dir!r}: no such directory (a folder of lm-eval task YAML files)")
    for name in ("calib_samples", "seq_len", "batch_size", "val_samples", "iterative_steps"):
        if getattr(cfg, name) < 1:
            raise PruningConfigError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.dtype not in DTYPES:
        raise PruningConfigError(f"dtype={cfg.dtype!r} is not one of {', '.join(DTYPES)}")
    if cfg.max_shard_size_mb < 1:
        raise PruningConfigError(f"max_shard_size_mb={cfg.max_shard_size_mb} must be >= 1")
    _device(cfg.device)  # a clear error for a device name torch does not know, or one this machine lacks
    src = resolve_model(cfg.model)
    if not has_tokenizer(src):
        raise PruningConfigError(f"model={cfg.model!r}: no tokenizer files in {src}; a pruned model must carry "
                                 f"its tokenizer (save one with tokenizer.save_pretrained)")
    config = AutoConfig.from_pretrained(src)
    family_of(config)
    if not cfg.target:
        raise PruningConfigError("target is empty: give at least one KEY=VALUE, e.g. --target hidden_size=432")
    target = PruneTarget.from_dict(cfg.target)
    new_config, drop = resolve_target(config, target)
    if cfg.sequential and drop is None and new_config["num_hidden_layers"] < config.num_hidden_layers:
        _check_task_sequential(cfg)
    if cfg.seq_len > getattr(config, "max_position_embeddings", cfg.seq_len):
        raise PruningConfigError(f"seq_len={cfg.seq_len} exceeds the model's max_position_embeddings="
                                 f"{config.max_position_embeddings}")
    if out.resolve() == src.resolve():
        raise PruningConfigError(f"output={cfg.output!r} is the source model's own directory")
    if cfg.scores:  # reused scores must load and fit this model now, not after calibration
        from .importance import Importance

        Importance.load(cfg.scores).check_matches(config)
    from ..outputs import dir_size

    # the pruned weights, in the source's dtype: the source's size scaled by the parameter ratio
    ratio = count_parameters_ratio(config, new_config)
    check_output(cfg.output, "output", sources=[src, *input_paths(data_cfg, cfg)], overwrite=cfg.overwrite,
                 need_bytes=int(dir_size(src) * ratio), error=PruningConfigError)
    return src, config, target, new_config, drop


def count_parameters_ratio(config, new_config: dict) -> float:
    from types import SimpleNamespace

    from ..arch import count_parameters

    # per-layer fields are None until the layers are chosen: the source's then (Nemotron-H's count scales its layer
    # pattern to the target's depth)
    new = SimpleNamespace(**{**config.to_dict(), **{k: v for k, v in new_config.items() if v is not None}})
    return count_parameters(new)["total"] / max(count_parameters(config)["total"], 1)


def _interpolate(src_cfg, final: dict, step: int, steps: int) -> dict:
    """Target of iterative step ``step`` of ``steps``: widths shrink geometrically toward ``final``.

    Heads and layers go to their final value in the first step (their counts must stay divisible).
    """
    t = {}
    family = family_of(src_cfg, check=False)
    for k in ("hidden_size", family.mlp_field):
        a, b = getattr(src_cfg, k), final[k]
        if a != b:
            v = round(a * (b / a) ** (step / steps))
            if k == "hidden_size" and family.hidden_divisible_by_heads:
                h = final["num_attention_heads"]
                v = max(b, int(round(v / h)) * h)
            m = family.width_multiple(src_cfg)  # MoE experts kernels need aligned rows
            v = max(b, int(round(v / m)) * m) if v % m else v
            t[k] = v if step < steps else b
    for k in ("num_attention_heads", "num_key_value_heads", *family.extra_width_fields):
        if getattr(src_cfg, k) != final[k]:
            t[k] = final[k]
    if family.is_moe and family.num_experts(src_cfg) != family.num_experts(final):  # experts: also in step 1
        t[family.experts_field] = family.num_experts(final)
    return t


def _check_task_sequential(cfg) -> None:
    if is_task_metric(cfg.depth_metric):
        raise PruningConfigError(
            f"depth_metric={cfg.depth_metric!r} needs the whole model in memory (lm-eval runs the full model for every "
            f"candidate block), but calibration runs layer by layer here (sequential); use depth_metric=lm-loss or "
            f"block-influence, which run layer by layer, or give drop_layers explicitly")


def _offload_dir(cfg) -> Path:
    """Where the disk activation cache goes: ``offload_dir``, else beside the output (a disk the user chose)."""
    import tempfile

    if cfg.offload_dir:
        return Path(cfg.offload_dir).expanduser()
    return Path(cfg.output).expanduser().resolve().parent if cfg.output else Path(tempfile.gettempdir())


def sequential_scores(cfg, src: Path, calib, val, aggregation: str | None, influence_block: int, loss_block: int,
                      device, progress: bool = True) -> tuple[Importance | None, LayerImportance | None, list]:
    """Width importance and the depth scans, one layer at a time (:mod:`.sequential`); ``cfg`` carries the
    :class:`SequentialOptions` and ``dtype``/``batch_size``. Returns (scores, depth scores, cache facts)."""
    plan = SequentialPlan(aggregation=aggregation, influence_block=influence_block, loss_block=loss_block,
                          batch_size=cfg.batch_size, activation_cache=cfg.activation_cache,
                          offload_dir=_offload_dir(cfg), progress=progress,
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


def compute_scores(data_cfg: DataConfig, cfg: PruneConfig, src: Path, tokenizer, width_scores: bool,
                   depth_k: int, state=None, device=None, info: dict | None = None):
    """The calibration pass(es): activation importance of every width axis (when ``width_scores``) and
    the depth scan of contiguous blocks of ``depth_k`` layers (when > 0) under ``cfg.depth_metric``.

    Returns (Importance | None, LayerImportance | None, calibration blocks | None). Data is loaded and
    checked before the model, so a too-small dataset fails before any forward pass. Under
    ``accelerate launch`` each process scores its shard and the sums are all-reduced. A model that does not fit
    the device (or ``cfg.sequential``) is calibrated one layer at a time; ``info`` receives how.
    """
    from ..compat import check_vocab

    check_vocab(src, tokenizer, cfg.model, error=PruningConfigError)  # before data or weights: ids fit the model
    state = state or process_state()
    device = device if device is not None else (state.device if state.num_processes > 1 else _device(cfg.device))
    by_influence = depth_k > 0 and cfg.depth_metric == "block-influence"
    by_task = depth_k > 0 and is_task_metric(cfg.depth_metric)
    if by_task:
        if state.num_processes > 1:
            raise PruningConfigError("depth_metric=task:... runs in a single process; launch without accelerate")
        from ..eval.harness import check_tasks, task_manager

        check_tasks([cfg.depth_metric[len("task:"):]], task_manager(cfg.tasks_dir))  # before loading weights
    seq = (width_scores or depth_k > 0) and decide_sequential(cfg, src, DTYPES[cfg.dtype], device)
    if seq and by_task:
        _check_task_sequential(cfg)
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


def run_prune(data_cfg: DataConfig, cfg: PruneConfig) -> dict:
    """Prune ``cfg.model`` to ``cfg.target`` and write a vanilla HF checkpoint to ``cfg.output``.

    Under ``accelerate launch`` every process scores its shard of the calibration (and validation)
    blocks, the sums are all-reduced, and the main process alone writes the output.
    """
    t0 = time.time()
    src, config, target, new_config, drop = validate(cfg, data_cfg)
    state = process_state()
    if state.num_processes > 1 and cfg.iterative_steps > 1:
        raise PruningConfigError("iterative_steps > 1 runs in a single process; launch without accelerate")
    from ..loading import load_tokenizer

    tokenizer = load_tokenizer(src)  # checks that its ids fit the model's vocabulary
    device = state.device if state.num_processes > 1 else _device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    width = target.width_fields()  # given width fields, even equal to the source's: rank and reorder
    need_scores = bool(width) and cfg.importance != "random" and not cfg.scores
    depth_needed = drop is None and new_config["num_hidden_layers"] < config.num_hidden_layers

    record: dict = {
        "source": str(cfg.model), "source_dir": str(src),
        "target": {k: v for k, v in asdict(target).items() if v is not None},
        "importance": {"method": cfg.importance, "calib_samples": cfg.calib_samples, "seq_len": cfg.seq_len,
                       "scores": cfg.scores, "iterative_steps": cfg.iterative_steps,
                       "merge_pruned_heads": cfg.merge_pruned_heads},
        "data": asdict(data_cfg), "processes": state.num_processes,
    }
    depth_k = config.num_hidden_layers - new_config["num_hidden_layers"] if depth_needed else 0
    how: dict = {}
    imp, li, calib = compute_scores(data_cfg, cfg, src, tokenizer, need_scores, depth_k, state, device, how)
    record["importance"].update(how)
    if calib is None and width and cfg.iterative_steps > 1 and cfg.importance != "random":
        # steps after the first re-estimate importance on the partly pruned model
        calib = load_blocks(data_cfg, tokenizer, "calibration", cfg.seq_len, cfg.calib_samples)
    if width and cfg.iterative_steps > 1 and cfg.importance != "random" and "sequential" not in how:
        how["sequential"] = decide_sequential(cfg, src, dtype, device)  # the first step reused saved scores
    if li is not None:
        drop = li.best_block(cfg.depth_metric)
        record["depth"] = {"metric": cfg.depth_metric, "block_size": depth_k, "dropped": drop,
                           "baseline_loss": li.baseline_loss, "lm_loss": li.lm_loss,
                           "block_influence": li.block_influence}
        if li.task:
            record["depth"].update({"task": li.task, "task_score": li.task_metric,
                                    "baseline_accuracy": li.baseline_accuracy, "task_accuracy": li.task_accuracy,
                                    "noncontiguous": li.noncontiguous})
        logger.info("depth: dropping layers %s (%s)", drop, cfg.depth_metric)
    drop = drop or []

    if width and imp is None:
        if cfg.importance == "random":
            imp = random_importance(config, seed=data_cfg.split_seed)
        else:
            imp = Importance.load(cfg.scores)
            imp.check_matches(config)

    def write(tmp: Path) -> None:
        steps = cfg.iterative_steps if width else 1
        cur_src, cur_config, cur_drop, cur_imp, work = src, config, drop, imp, tmp / ".steps"
        overall = None  # the plan from the source to the current step
        for step in range(1, steps + 1):
            step_width = _interpolate(config, new_config, step, steps) if steps > 1 else width
            step_new, step_drop = resolve_target(
                cur_config, PruneTarget.from_dict({**step_width, "drop_layers": cur_drop or None}))
            if step > 1 and cfg.importance != "random" and how.get("sequential"):  # re-estimate on the
                cur_imp = sequential_scores(cfg, cur_src, calib, None, cfg.importance, 0, 0, device)[0]  # partly
            elif step > 1 and cfg.importance != "random":  # pruned model, as the first step ran
                cur_imp = estimate_importance(load_model(cur_src, dtype=dtype, device=device), calib,
                                              cfg.importance, batch_size=cfg.batch_size)
            elif step > 1:
                cur_imp = random_importance(cur_config, seed=data_cfg.split_seed + step)
            plan = make_plan(cur_config, cur_imp, step_new, step_drop, cfg.merge_pruned_heads)
            overall = plan if step == 1 else overall.then(plan)
            dest = tmp if step == steps else work / f"step{step}"
            dest.mkdir(parents=True, exist_ok=True)
            _write_checkpoint(cur_src, dest, cur_config, plan, cfg)
            record.setdefault("steps", []).append({"target": step_width})
            cur_src, cur_drop = dest, []
            cur_config = type(config).from_dict(plan.new_config)
        shutil.rmtree(work, ignore_errors=True)
        if li is not None:
            li.save(tmp / "importance")  # layer_importance.json + PNG of loss against block start
        if imp is not None and need_scores:
            imp.save(tmp / "importance")
            plot_importance(imp, tmp / "importance" / "importance.png", title=f"{cfg.model} ({cfg.importance})")
        record["kept"] = overall.to_json()  # indices into the source model, also after several steps
        # transformers' own reader: it writes non-finite floats as {"__float__": "Infinity"} (Nemotron-H's
        # time_step_limit), which plain json.loads leaves encoded
        record["parameters"] = parameter_counts(config, type(config)._dict_from_json_file(tmp / "config.json"))
        record["wall_time_s"] = round(time.time() - t0, 1)
        (tmp / "pruning.json").write_text(json.dumps(record, indent=1))

    if state.is_main_process:
        write_checkpoint_atomically(Path(cfg.output), write)
        p = record["parameters"]
        logger.info("pruned %s -> %s: %.1fM -> %.1fM parameters (non-embedding %.1fM -> %.1fM) in %.0f s",
                    cfg.model, cfg.output, p["before"]["total"] / 1e6, p["after"]["total"] / 1e6,
                    p["before"]["non_embedding"] / 1e6, p["after"]["non_embedding"] / 1e6, record["wall_time_s"])
    state.wait_for_everyone()
    if "parameters" not in record:  # other ranks: the same numbers, from the same target and kept layers (every rank
        # chose the same ones; a hybrid's count depends on which layer types they are), without reading what the main
        # process wrote, which a filesystem the ranks do not share would not show them
        dropped = set(drop)
        kept = [i for i in range(config.num_hidden_layers) if i not in dropped]
        record["parameters"] = parameter_counts(config, kept_layers_config(config, new_config, kept))
    record.setdefault("wall_time_s", round(time.time() - t0, 1))
    return record


def _write_checkpoint(src: Path, dest: Path, config, plan, cfg: PruneConfig) -> None:
    from transformers import AutoConfig

    trim_checkpoint(src, dest, plan, max_shard_bytes=cfg.max_shard_size_mb << 20)
    new_cfg = type(config).from_dict(plan.new_config)
    new_cfg.architectures = getattr(config, "architectures", None) or [f"{type(config).__name__.replace('Config', '')}ForCausalLM"]
    new_cfg.save_pretrained(dest)
    copy_aux_files(src, dest)
    AutoConfig.from_pretrained(dest)  # what we wrote must load


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


def run_importance(data_cfg: DataConfig, cfg: ImportanceConfig) -> dict:
    from transformers import AutoConfig

    out = check_output(cfg.output, "output", sources=input_paths(data_cfg, cfg), overwrite=cfg.overwrite,
                       error=PruningConfigError)
    cfg.check_sequential_options()
    parse_aggregation(cfg.importance)
    from ..loading import load_tokenizer

    src = resolve_model(cfg.model)
    check_output(cfg.output, "output", sources=[src, *input_paths(data_cfg, cfg)], overwrite=cfg.overwrite,
                 error=PruningConfigError)
    L = AutoConfig.from_pretrained(src).num_hidden_layers
    if cfg.block_size and not 1 <= cfg.block_size < L:
        raise PruningConfigError(f"block_size={cfg.block_size} must be between 1 and {L - 1}")
    device = _device(cfg.device)
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

    def write(tmp: Path) -> None:
        imp.save(tmp)
        plot_importance(imp, tmp / "importance.png", title=f"{cfg.model} ({cfg.importance})")
        if li is not None:
            li.save(tmp)

    write_checkpoint_atomically(out, write)
    return result


def validation_loss(model_dir, data_cfg: DataConfig, samples: int = 32, seq_len: int = 512, batch_size: int = 8,
                    device=None) -> float:
    """LM loss of a checkpoint on the validation split (the number pruning is judged by)."""
    from ..loading import load_tokenizer
    from .depth import lm_loss


    tok = load_tokenizer(model_dir)  # before the weights load: its ids fit the model's vocabulary
    model = load_model(model_dir, device=device)
    blocks = load_blocks(data_cfg, tok, "validation", seq_len, samples)
    return lm_loss(model, blocks, batch_size)
