"""Which ``checkpoint-N`` folders of a trainer's output_dir are complete, and which hold finite weights.

The ``transformers.Trainer`` writes ``output_dir/checkpoint-N`` file by file, in place, and ``get_last_checkpoint``
only reads the step number in the name: a kill or a full disk mid-save leaves a ``checkpoint-N`` holding part of its
files (often just ``model.safetensors``, or nothing) that every later resume would pick. Here a checkpoint is complete
when its ``trainer_state.json`` parses, its weights are whole (safetensors headers and lengths, or zip archives), and
its marker (:data:`MARKER`, written last) is readable: :func:`checkpoint_problem` says why not,
:func:`latest_complete_checkpoint` skips the partial ones with a log line, and :func:`last_good_checkpoint` is the
newest one whose weights are finite and that training went on from (what a diverged run names).

Neighbours: the folder names of an output_dir (``checkpoint-N``, ``tmp-checkpoint-N``) and the output checks of
trainers are in :mod:`minitron_hf.outputs`; ``--resume-from-checkpoint`` and the checks before a resume in
:mod:`minitron_hf.resume`; the Trainer mixin that writes checkpoints atomically in :mod:`minitron_hf.training`.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import MinitronError
from .model_files import index_shards
from .outputs import checkpoint_step, safetensors_problem

logger = logging.getLogger(__name__)

MARKER = "minitron_checkpoint.json"  # written last into a checkpoint: {"step", "finite": true}
TRAINER_STATE = "trainer_state.json"
JIT_SENTINEL = "checkpoint-is-incomplete.txt"  # transformers' JIT (on SIGTERM) checkpoint, while it is written


class CheckpointError(MinitronError):
    """A checkpoint that cannot be used, or an output directory that would lose one."""


def _index_problem(index: Path, check) -> str | None:
    try:
        shards = index_shards(index)
    except MinitronError as e:
        return f"{index.name} is unreadable ({e})"
    for s in shards:
        p = check(index.parent / s)
        if p:
            return p
    return None


def _bin_problem(f: Path) -> str | None:
    if not f.is_file():
        return f"{f.name} is missing"
    return None if zipfile.is_zipfile(f) else f"{f.name} is truncated or unreadable"


def _weights_problem(d: Path) -> str | None:
    """Why the model weights of checkpoint folder ``d`` are unusable, or None."""
    for index in ("model.safetensors.index.json", "adapter_model.safetensors.index.json"):
        if (d / index).exists():
            return _index_problem(d / index, safetensors_problem)
    single = [d / n for n in ("model.safetensors", "adapter_model.safetensors") if (d / n).exists()]
    if single:
        return next((p for p in map(safetensors_problem, single) if p), None)
    if (d / "pytorch_model.bin.index.json").exists():
        return _index_problem(d / "pytorch_model.bin.index.json", _bin_problem)
    single = [d / n for n in ("pytorch_model.bin", "adapter_model.bin") if (d / n).exists()]
    if single:
        return next((p for p in map(_bin_problem, single) if p), None)
    # sharded training states (FSDP, DeepSpeed): their files are not checked one by one
    if any(p.name.startswith("pytorch_model_fsdp") or (p.is_dir() and p.name.startswith("global_step"))
           for p in d.iterdir()):
        return None
    return "no model weights"


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (missing/unparseable trainer_state.json, missing or truncated
    weights, an unreadable marker), or None when it is complete."""
    d = Path(path)
    if not d.is_dir():
        return "not a directory"
    if (d / JIT_SENTINEL).exists():
        return f"{JIT_SENTINEL} is present"
    try:
        state = json.loads((d / TRAINER_STATE).read_text())
        if not isinstance(state, dict) or "global_step" not in state:
            return f"{TRAINER_STATE} has no global_step"
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError) as e:
        return f"{TRAINER_STATE} is unreadable ({e})"
    problem = _weights_problem(d)
    if problem:
        return problem
    if (d / MARKER).exists():
        try:
            json.loads((d / MARKER).read_text())
        except (OSError, ValueError) as e:
            return f"{MARKER} is unreadable ({e})"
    return None


def is_complete_checkpoint(path: str | Path) -> bool:
    return checkpoint_problem(path) is None


def numbered_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(N, folder) for every ``checkpoint-N`` folder of ``output_dir``, complete or not, newest (highest N) first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in out.iterdir() if p.is_dir()]
    return sorted(((n, p) for n, p in found if n is not None), reverse=True)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Every complete ``checkpoint-N`` of ``output_dir``, oldest first."""
    return [p for _, p in reversed(numbered_checkpoints(output_dir)) if checkpoint_problem(p) is None]


def latest_complete_checkpoint(output_dir: str | Path, log: bool = True) -> Path | None:
    """The newest complete ``checkpoint-N`` of ``output_dir`` (None if there is none); with ``log``, logs
    which one it picked and the newer, partial ones it skipped (e.g. a save interrupted by a kill)."""
    out = Path(output_dir)
    for n, p in numbered_checkpoints(out):
        problem = checkpoint_problem(p)
        if problem is None:
            if log:
                logger.info("newest complete checkpoint in %s: %s", out, p.name)
            return p
        if log:
            logger.warning("skipping partial checkpoint %s (%s; an interrupted save?)", p, problem)
    return None


def _weights_finite(d: Path) -> bool:
    """Whether a checkpoint's weights are finite: trusted from the marker we write, else read (safetensors)."""
    try:
        marker = json.loads((d / MARKER).read_text())
        if "finite" in marker:
            return bool(marker["finite"])
    except (OSError, ValueError):
        pass
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                t = fh.get_tensor(k)
                if t.is_floating_point() and not torch.isfinite(t).all():
                    return False
    return True


def last_good_checkpoint(output_dir: str | Path, diverged_at: int | None = None) -> Path | None:
    """The newest complete checkpoint of ``output_dir`` whose weights are finite, or None.

    ``diverged_at`` (the step whose loss or update was non-finite): finite is not enough, the checkpoint must also
    be one that training went on from. The step that diverged started from the weights of step
    ``diverged_at - 1``; those were finite but produced a non-finite loss or gradient (with a learning rate of
    1e30 the first update leaves finite weights near 1e30, from which every later step overflows). So only
    checkpoints up to step ``diverged_at - 2`` count: at least one more step succeeded from each of them."""
    for step, p in numbered_checkpoints(output_dir):
        if diverged_at is not None and step > diverged_at - 2:
            continue
        if checkpoint_problem(p) is None:
            if _weights_finite(p):
                return p
            logger.warning("checkpoint %s has non-finite weights; not a good checkpoint", p)
    return None
