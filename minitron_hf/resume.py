"""Resuming a training run: ``--resume-from-checkpoint``, the checks before a resume, and the exit of a preempted run.

Neighbours: which checkpoints are complete is :mod:`minitron_hf.checkpoints`; the Trainer mixin that resumes and
writes them, :mod:`minitron_hf.training`; the folder checks of a trainer's output_dir, :mod:`minitron_hf.outputs`.

**The flag.** ``resume_from_checkpoint`` is a bool, a CLI string or a path: :func:`parse_resume_flag` reads it
("true", "false", "auto" or a path), :func:`resolve_resume` turns it into the newest *complete* checkpoint (or the
given one, once it is checked complete), and :func:`check_output_dir`, before training, also refuses an output_dir
holding an earlier run's checkpoints unless the run resumes or overwrites them.

**Shapes.** The Trainer loads a checkpoint's weights with ``load_state_dict(..., strict=False)``: a checkpoint of a
model of another shape (another student, another target) fails there with a ``RuntimeError`` listing every
mismatching tensor, after the models loaded and the baseline was evaluated. :func:`check_resume_shapes` compares the
checkpoint's safetensors *headers* (no tensor is read) with the model's tensors first and names the checkpoint,
the first mismatching tensor and both shapes.

**Preemption.** With ``enable_jit_checkpoint`` transformers catches SIGTERM, saves ``checkpoint-N`` at the next
step boundary and stops training as if it had finished: ``Trainer.train()`` returns normally.
:func:`watch_preemption` notices that save, and :class:`TrainingPreempted` turns it into a distinct outcome: no
``final/`` model, a log line naming the checkpoint and ``--resume-from-checkpoint true``, and exit code
:data:`~minitron_hf.errors.EXIT_PREEMPTED` from the CLI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch

from .checkpoints import CheckpointError, checkpoint_problem, latest_complete_checkpoint, numbered_checkpoints
from .errors import MinitronError
from .model_files import index_shards
from .outputs import checkpoint_folders, require_output_dir

logger = logging.getLogger(__name__)

_HEADER_LIMIT = 100 * 2**20  # a safetensors header is JSON of names, dtypes, shapes and offsets: never this large
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off", "none", "null", ""}
AUTO = "auto"  # resume when there is a complete checkpoint, else start: what a requeued SLURM job passes


class CheckpointShapeError(MinitronError):
    """A checkpoint whose tensors do not fit the model it would be loaded into."""


class TrainingPreempted(MinitronError):
    """Training stopped on SIGTERM after saving a checkpoint (``enable_jit_checkpoint``); nothing final was written.

    ``checkpoint`` (Path or None) and ``step`` are attributes. Not an error of the user's: the CLI exits with
    :data:`~minitron_hf.errors.EXIT_PREEMPTED`, and a rerun with ``--resume-from-checkpoint true`` goes on."""

    def __init__(self, step: int, checkpoint: Path | None, output_dir: Path | str, resume: str | None = None):
        self.step, self.output_dir, self.resume = step, Path(output_dir), resume
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        resume = resume or f"resume with --resume-from-checkpoint true (and the same --output-dir {self.output_dir})"
        where = (f"checkpoint saved at step {step}: {self.checkpoint}; {resume}" if self.checkpoint else
                 f"no checkpoint was saved at step {step}; rerun to start again")
        super().__init__(f"training was preempted (SIGTERM) at step {step} and stopped before the end; no final "
                         f"model was written; {where}")

    def __reduce__(self):
        return (TrainingPreempted, (self.step, self.checkpoint, self.output_dir, self.resume))


# --------------------------------------------------------------------------------------------------
# The flag, and the output_dir it resumes from
# --------------------------------------------------------------------------------------------------

def parse_resume_flag(value) -> bool | str | None:
    """``resume_from_checkpoint`` as given (bool, CLI string or path) -> True, None or a path string:
    "true"/"1"/"yes" mean True (the newest complete checkpoint), "false"/"0"/"no"/"" mean no resume, and "auto"
    stays "auto" (the newest complete checkpoint if there is one, else a fresh start: for requeued cluster jobs)."""
    if value is None or value is False:
        return None
    if value is True:
        return True
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    s = str(value).strip()
    if s.lower() in _TRUE:
        return True
    if s.lower() in _FALSE:
        return None
    if s.lower() == AUTO:
        return AUTO
    return s


def resolve_resume(value, output_dir: str | Path) -> str | None:
    """The checkpoint folder to resume from (a path string) or None; raises :class:`CheckpointError` naming
    the folder when it is missing or not complete, or when True is asked and there is no complete checkpoint."""
    flag = parse_resume_flag(value)
    if flag is None:
        return None
    out = Path(output_dir)
    if flag == AUTO:
        ckpt = latest_complete_checkpoint(out)
        if ckpt is None:
            logger.info("resume_from_checkpoint=auto: no complete checkpoint in %s, starting from step 0", out)
        return None if ckpt is None else str(ckpt)
    if flag is True:
        ckpt = latest_complete_checkpoint(out)
        if ckpt is None:
            partial = [p.name for _, p in numbered_checkpoints(out)]
            raise CheckpointError(
                f"resume_from_checkpoint=true: output_dir {out} holds no complete checkpoint"
                + (f" (only partial ones: {', '.join(partial)})" if partial else "")
                + "; drop --resume-from-checkpoint to start over")
        logger.info("resuming from %s", ckpt)
        return str(ckpt)
    p = Path(flag).expanduser()
    if not p.exists():
        raise CheckpointError(f"resume_from_checkpoint={flag}: no such directory; give a checkpoint-N folder, or "
                              f"true for the newest complete one in output_dir")
    problem = checkpoint_problem(p)
    if problem is not None:
        inside = latest_complete_checkpoint(p, log=False) if p.is_dir() else None
        raise CheckpointError(
            f"resume_from_checkpoint={flag} is not a complete checkpoint ({problem})"
            + (f"; did you mean {inside}?" if inside else
               f"; give a complete checkpoint-N folder, or true for the newest complete one in {out}"))
    logger.info("resuming from %s", p)
    return str(p)


def check_output_dir(output_dir: str | Path, resume, overwrite: bool, error=CheckpointError, *, args=None,
                     sources=()) -> str | None:
    """Before training into ``output_dir``: the checkpoint to resume from (resolved, see :func:`resolve_resume`),
    or None. Without resume and without ``overwrite``, an output_dir holding a complete checkpoint of an
    earlier run is an ``error`` (a :class:`~minitron_hf.errors.MinitronError` class): it would be overwritten.
    With ``overwrite`` the caller removes the old checkpoints with :func:`~minitron_hf.outputs.remove_checkpoints`
    before training.

    ``args`` (the TrainingArguments) and ``sources`` (the models read): :func:`~minitron_hf.outputs.require_output_dir`
    checks the folder first (given, writable, its ``final/`` clear of every source)."""
    require_output_dir(output_dir, error, args=args, sources=sources)
    out = Path(output_dir)
    if parse_resume_flag(resume) is not None:
        return resolve_resume(resume, out)
    if overwrite:
        return None
    newest = latest_complete_checkpoint(out, log=False)
    if newest is not None:
        raise error(f"output_dir {out} holds checkpoints from an earlier run (newest complete: {newest.name}); pass "
                    f"--resume-from-checkpoint true to continue it or --overwrite to start over")
    partial = checkpoint_folders(out)
    if partial:
        logger.warning("output_dir %s holds partial checkpoints of an earlier run (%s); they cannot be resumed and "
                       "will be replaced", out, ", ".join(p.name for p in partial))
    return None



# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------

def _header(f: Path) -> dict:
    """name -> shape of every tensor of a safetensors file, from its header only."""
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 2 <= n <= _HEADER_LIMIT:
            raise ValueError(f"{f.name} has an unreadable header")
        meta = json.loads(fh.read(n))
    return {k: tuple(v["shape"]) for k, v in meta.items() if k != "__metadata__"}


def header_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor of a checkpoint folder's safetensors weights (single file or sharded with an
    index, full model or PEFT adapter), read from the headers; {} when the folder has no safetensors weights (e.g.
    FSDP or DeepSpeed training states)."""
    d = Path(folder)
    for stem in ("model", "adapter_model"):
        index = d / f"{stem}.safetensors.index.json"
        files = []
        if index.is_file():
            files = [d / s for s in index_shards(index)]
        elif (d / f"{stem}.safetensors").is_file():
            files = [d / f"{stem}.safetensors"]
        if files:
            out: dict[str, tuple[int, ...]] = {}
            for f in files:
                out.update(_header(f))
            return out
    return {}


def model_shapes(model) -> dict[str, tuple[int, ...]]:
    """name -> full shape of every tensor of ``model``'s state dict (DeepSpeed ZeRO-3's partitioned parameters and
    FSDP2's DTensors report the full shape), with PEFT's adapter names dropped from the names as PEFT does on save
    (``lora_A.default.weight`` is saved as ``lora_A.weight``)."""
    adapters = list(getattr(model, "peft_config", None) or {})
    out = {}
    for k, t in model.state_dict(keep_vars=True).items():
        shape = getattr(t, "ds_shape", None) or getattr(t, "shape", None)
        if shape is None:
            continue
        for a in adapters:
            k = k.replace(f".{a}.", ".")
        out[k] = tuple(shape)
    return out


def _disk_to_model_names(model):
    """A function from on-disk tensor names to ``model``'s own (transformers 5's renamings, e.g. Nemotron-H's
    ``backbone.`` -> ``model.``), or None for names that a converter changes (fused experts: another shape by design,
    not compared). Identity when transformers offers no mapping."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
    except Exception:  # another transformers version, or not a PreTrainedModel: names as they are
        return None
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    if not transforms:
        return None

    def rename(key: str) -> str | None:
        try:
            name, converted = rename_source_key(key, renamings, converters)
        except Exception:
            return key
        return None if converted is not None else name

    return rename


def check_resume_shapes(checkpoint: str | Path, shapes: dict[str, tuple[int, ...]], what: str,
                        error=CheckpointShapeError, require_overlap: bool = False,
                        num_hidden_layers: int | None = None, rename=None) -> None:
    """Raise ``error`` when a tensor of ``checkpoint`` (a folder) has another shape than the tensor of the same name
    in ``shapes`` (``what`` names the model they come from); with ``require_overlap``, also when they share no tensor
    name at all (a checkpoint of another architecture, which a non-strict load would silently skip); with
    ``num_hidden_layers``, also when the checkpoint's config.json has another depth (its missing or extra layers
    would be skipped silently too)."""
    _check_depth(checkpoint, num_hidden_layers, what, error)
    ckpt = header_shapes(checkpoint)
    if not ckpt or not shapes:
        return
    if rename is not None:  # on-disk names -> the model's (``rename``: None for a tensor not to compare)
        ckpt = {n: v for n, v in ((rename(k), v) for k, v in ckpt.items()) if n is not None}
        if not ckpt:
            return
    common = [k for k in ckpt if k in shapes]
    for k in common:
        if tuple(ckpt[k]) != tuple(shapes[k]):
            raise error(f"resume_from_checkpoint={str(checkpoint)!r} does not fit {what}: tensor {k!r} has shape "
                        f"{list(ckpt[k])} in the checkpoint and {list(shapes[k])} in the model (a checkpoint of a "
                        f"model of another shape); resume with the model it was trained from, or start a new run in "
                        f"another output_dir")
    if require_overlap and not common:
        raise error(f"resume_from_checkpoint={str(checkpoint)!r} does not fit {what}: none of its {len(ckpt)} tensors "
                    f"(e.g. {next(iter(ckpt))!r}) is a tensor of the model (e.g. {next(iter(shapes))!r}); resume with "
                    f"the model it was trained from, or start a new run in another output_dir")


def _check_depth(checkpoint, layers: int | None, what: str, error) -> None:
    cfg_file = Path(checkpoint) / "config.json"
    if layers is None or not cfg_file.is_file():
        return
    try:
        theirs = json.loads(cfg_file.read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs != layers:
        raise error(f"resume_from_checkpoint={str(checkpoint)!r} does not fit {what}: the checkpoint has "
                    f"num_hidden_layers={theirs} and the model {layers}; resume with the model it was trained from, "
                    f"or start a new run in another output_dir")


def check_model_fits_checkpoint(checkpoint: str | Path, model, what: str = "the model",
                                error=CheckpointShapeError) -> None:
    """:func:`check_resume_shapes` for a model instance (its state dict's shapes and its config's depth)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    check_resume_shapes(checkpoint, model_shapes(model), what, error, require_overlap=True,
                        num_hidden_layers=n if isinstance(n, int) else None, rename=_disk_to_model_names(model))


def load_renamed_weights(model, checkpoint: str | Path) -> bool:
    """Load a checkpoint's weights into ``model`` where transformers' Trainer would lose them; True when it did.

    The Trainer resumes with ``model.load_state_dict(file, strict=False)`` under the names on disk. Families whose
    checkpoints are written under other names than the model holds (Nemotron-H's ``backbone.*`` for ``model.*``;
    Mixtral's and Qwen3-MoE's per-expert tensors for the stacked ``experts.gate_up_proj``) then load nothing, or no
    expert, with only a warning (checked on tiny models with transformers 5.19: 28, 12 and 8 tensors missing). For a
    plain (not sharded, not PEFT) checkpoint whose names are not the model's own, load it the way
    ``from_pretrained`` does (its renamings and converters) into a CPU copy and copy that in with a strict load; it
    holds a second copy of the weights on the CPU for the moment. False (the Trainer's own load is right): the names
    match, or the checkpoint is sharded (FSDP, DeepSpeed) or an adapter."""
    d = Path(checkpoint)
    disk = set(header_shapes(d))
    if not disk or getattr(model, "peft_config", None) or not (d / "config.json").is_file():
        return False
    own = set(model.state_dict())
    if own <= disk | _tied_names(model):
        return False
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    logger.info("loading %s under %s's own names (its files name %d tensors the model does not hold)", d,
                type(model).__name__, len(disk - own))
    copy = type(model).from_pretrained(d, config=model.config, dtype=dtype, device_map="cpu")
    model.load_state_dict(copy.state_dict(), strict=True)
    del copy
    return True


def _tied_names(model) -> set:
    """Names of tensors a checkpoint may leave out because they are tied to another (the LM head)."""
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys) if not isinstance(keys, dict) else set(keys) | set(keys.values())


# --------------------------------------------------------------------------------------------------
# Preemption (enable_jit_checkpoint)
# --------------------------------------------------------------------------------------------------

class _Preemption:
    step: int | None = None


@contextlib.contextmanager
def watch_preemption(trainer):
    """Record the step of a JIT checkpoint transformers saves on SIGTERM during the block (``.step``, else None)."""
    seen = _Preemption()
    managers = [cb.jit_manager for cb in trainer.callback_handler.callbacks if getattr(cb, "jit_manager", None)]
    originals = []
    for m in managers:
        real = m.execute_jit_checkpoint

        def execute(real=real):
            seen.step = trainer.state.global_step
            logger.warning("SIGTERM: saving a checkpoint at step %d, then stopping (enable_jit_checkpoint)",
                           seen.step)
            return real()

        originals.append((m, real))
        m.execute_jit_checkpoint = execute
    try:
        yield seen
    finally:
        for m, real in originals:
            m.execute_jit_checkpoint = real


def preempted(trainer, step: int, checkpoint: Path | None) -> TrainingPreempted:
    """The error for a run that stopped after its JIT checkpoint at ``step`` (``checkpoint``: that checkpoint's
    folder when it is complete, else None); logs where to resume from."""
    err = TrainingPreempted(step, checkpoint, Path(trainer.args.output_dir))
    if trainer.is_world_process_zero():
        logger.warning("%s", err)
    return err
