"""The pruning runner: checks before work, importance, plan, trim, output.

``run_prune`` is what ``minitron prune`` and ``recipes/prune.py`` call. Everything that can be checked from config
files alone (target, options, output directory, tokenizer) is checked before a model is loaded
(:func:`~.config.check_inputs`, which resolves the target once); data is checked before a forward pass. The
options are :class:`~.config.PruneConfig`; the calibration passes :mod:`.scoring`; the slicing :mod:`.trim`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from transformers import AutoConfig

from ..arch import family_of
from ..data import DataConfig, load_blocks
from ..distributed import process_state
from ..loading import load_model, load_tokenizer, parse_device
from ..outputs import write_checkpoint_atomically
from .compensation import switches
from .config import DTYPES, PruneConfig, ResolvedTarget, check_inputs
from .importance import Importance, estimate_importance, random_importance
from .scoring import compute_scores, sequential_scores, write_scores
from .sequential import decide_sequential
from .trim import (PrunePlan, PruneTarget, PruningConfigError, copy_aux_files, kept_layers_config, make_plan,
                   parameter_counts, resolve_target, trim_checkpoint)

logger = logging.getLogger(__name__)


def run_prune(data_cfg: DataConfig, cfg: PruneConfig) -> dict:
    """Prune ``cfg.model`` to ``cfg.target`` and write a vanilla HF checkpoint to ``cfg.output``.

    Under ``accelerate launch`` every process scores its shard of the calibration (and validation)
    blocks, the sums are all-reduced, and the main process alone writes the output.
    """
    t0 = time.time()
    plan = check_inputs(cfg, data_cfg)
    src, config = plan.source, plan.config
    state = process_state()
    if state.num_processes > 1 and cfg.iterative_steps > 1:
        raise PruningConfigError("iterative_steps > 1 runs in a single process; launch without accelerate")
    tokenizer = load_tokenizer(src)  # checks that its ids fit the model's vocabulary
    device = state.device if state.num_processes > 1 else parse_device(cfg.device)
    width = plan.width  # given width fields, even equal to the source's: rank and reorder
    need_scores = bool(width) and cfg.importance != "random" and not cfg.scores

    record: dict = {
        "source": str(cfg.model), "source_dir": str(src),
        "target": plan.target.to_dict(),
        "importance": {"method": cfg.importance, "calib_samples": cfg.calib_samples, "seq_len": cfg.seq_len,
                       "scores": cfg.scores, "iterative_steps": cfg.iterative_steps,
                       "merge_pruned_heads": cfg.merge_pruned_heads},
        "data": asdict(data_cfg), "processes": state.num_processes,
    }
    depth_k = plan.depth_block
    how: dict = {}
    imp, li, calib = compute_scores(data_cfg, cfg, plan, tokenizer, need_scores, state, device, how)
    record["importance"].update(how)
    if calib is None and width and cfg.iterative_steps > 1 and cfg.importance != "random":
        # steps after the first re-estimate importance on the partly pruned model
        calib = load_blocks(data_cfg, tokenizer, "calibration", cfg.seq_len, cfg.calib_samples)
    if width and cfg.iterative_steps > 1 and cfg.importance != "random" and "sequential" not in how:
        how["sequential"] = decide_sequential(cfg, src, DTYPES[cfg.dtype], device)  # the first step reused saved scores
    if li is not None:
        plan = plan.with_drop(li.best_block(cfg.depth_metric))
        record["depth"] = {"metric": cfg.depth_metric, "block_size": depth_k, "dropped": plan.drop,
                           "baseline_loss": li.baseline_loss, "lm_loss": li.lm_loss,
                           "block_influence": li.block_influence}
        if li.task:
            record["depth"].update({"task": li.task, "task_score": li.task_metric,
                                    "baseline_accuracy": li.baseline_accuracy, "task_accuracy": li.task_accuracy,
                                    "noncontiguous": li.noncontiguous})
        logger.info("depth: dropping layers %s (%s)", plan.drop, cfg.depth_metric)

    if width and imp is None:
        if cfg.importance == "random":
            imp = random_importance(config, seed=data_cfg.split_seed)
        else:
            imp = Importance.load(cfg.scores)
            imp.check_matches(config)

    def write(tmp: Path) -> None:
        overall, record["steps"] = prune_steps(cfg, plan, imp, calib, tmp, device, bool(how.get("sequential")),
                                               data_cfg.split_seed)
        # layer_importance.json + PNG of loss against block start; the scores this run computed
        write_scores(tmp / "importance", imp if need_scores else None, li, f"{cfg.model} ({cfg.importance})")
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
        dropped = set(plan.drop or [])
        kept = [i for i in range(config.num_hidden_layers) if i not in dropped]
        record["parameters"] = parameter_counts(config, kept_layers_config(config, plan.new_config, kept))
    record.setdefault("wall_time_s", round(time.time() - t0, 1))
    return record


def prune_steps(cfg: PruneConfig, plan: ResolvedTarget, imp: Importance | None, calib, out: Path, device,
                sequential: bool, seed: int) -> tuple[PrunePlan, list[dict]]:
    """Trim ``plan.source`` to the resolved target into ``out``; returns (the plan from the source to the result,
    each step's width target).

    Single-shot (the paper) is one step with ``imp`` and the target as resolved. With ``cfg.iterative_steps`` = N
    > 1 (width targets only) the widths shrink geometrically over N steps (:func:`_step_widths`); each step after
    the first prunes the previous step's checkpoint (kept under ``out/.steps`` until the last) with importance
    re-estimated on it from ``calib`` (layer by layer when ``sequential``), or random scores seeded ``seed + step``.
    """
    steps = cfg.iterative_steps if plan.width else 1
    config = plan.config
    cur_src, cur_config, cur_drop, cur_imp, work = plan.source, config, plan.drop or [], imp, out / ".steps"
    overall, targets = None, []
    for step in range(1, steps + 1):
        if steps == 1:  # the target as check_inputs resolved it (and the depth scan chose its layers)
            step_width, step_new, step_drop = plan.width, plan.new_config, cur_drop or None
        else:  # a new target against the partly pruned model
            step_width = _step_widths(config, plan.new_config, step, steps)
            step_new, step_drop = resolve_target(cur_config, PruneTarget(**step_width, drop_layers=cur_drop or None))
        if step > 1 and cfg.importance != "random" and sequential:  # re-estimate on the partly pruned model, as
            cur_imp = sequential_scores(cfg, cur_src, calib, None, cfg.importance, 0, 0, device)[0]  # the first
        elif step > 1 and cfg.importance != "random":  # step ran
            cur_imp = estimate_importance(load_model(cur_src, dtype=DTYPES[cfg.dtype], device=device), calib,
                                          cfg.importance, batch_size=cfg.batch_size)
        elif step > 1:
            cur_imp = random_importance(cur_config, seed=seed + step)
        step_plan = make_plan(cur_config, cur_imp, step_new, step_drop, **switches(cfg))
        overall = step_plan if step == 1 else overall.then(step_plan)
        dest = out if step == steps else work / f"step{step}"
        dest.mkdir(parents=True, exist_ok=True)
        write_checkpoint(cur_src, dest, cur_config, step_plan, cfg.max_shard_size_mb)
        targets.append({"target": step_width})
        cur_src, cur_drop = dest, []
        cur_config = type(config).from_dict(step_plan.new_config)
    shutil.rmtree(work, ignore_errors=True)
    return overall, targets


def _step_widths(src_cfg, final: dict, step: int, steps: int) -> dict:
    """Width target of iterative step ``step`` of ``steps``: widths shrink geometrically toward ``final``.

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


def write_checkpoint(src: Path, dest: Path, config, plan: PrunePlan, max_shard_size_mb: int) -> None:
    """The trimmed weights, the pruned config and the source's tokenizer files into ``dest``; it must load."""
    trim_checkpoint(src, dest, plan, max_shard_bytes=max_shard_size_mb << 20)
    new_cfg = type(config).from_dict(plan.new_config)
    new_cfg.architectures = (getattr(config, "architectures", None)
                             or [f"{type(config).__name__.replace('Config', '')}ForCausalLM"])
    new_cfg.save_pretrained(dest)
    copy_aux_files(src, dest)
    AutoConfig.from_pretrained(dest)  # what we wrote must load
