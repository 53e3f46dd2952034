"""What every Trainer of the project shares: the checkpoint mixin, the training-argument rules, the final save.

Neighbours: which checkpoints are complete (and finite) is :mod:`minitron_hf.checkpoints`; ``--resume-from-checkpoint``
and the checks before a resume, :mod:`minitron_hf.resume`; the folder checks of a trainer's output_dir and the names of
its folders, :mod:`minitron_hf.outputs`. The trainers themselves are in ``distill/`` and ``alignment/``.

:class:`CheckpointMixin`, mixed into every Trainer subclass of the project (distillation, teacher correction, SFT,
RPO), changes how the ``transformers.Trainer`` checkpoints, which writes ``output_dir/checkpoint-N`` file by file, in
place, and saved a diverged run (NaN weights) like any other:

- a checkpoint is written into ``output_dir/tmp-checkpoint-N/checkpoint-N`` (a name that neither
  ``get_last_checkpoint`` nor checkpoint rotation matches), its files are fsync'ed, a marker
  (:data:`~minitron_hf.checkpoints.MARKER`) is written last, and only then it is renamed to ``output_dir/checkpoint-N``;
  a failed save removes the temporary folder and, for a full disk, says so in one line (:class:`CheckpointSaveError`);
- the weights are checked for NaN/inf before a checkpoint is written, and the loss at every step:
  a diverged run stops with :class:`TrainingDivergedError`, which names the newest checkpoint whose
  weights are finite;
- ``resume_from_checkpoint=True`` (or ``"true"``) means the newest *complete* checkpoint
  (:func:`~minitron_hf.resume.resolve_resume`); a given path must be a complete checkpoint;
- rotation (``save_total_limit``) counts complete checkpoints only, so it never deletes the only
  complete checkpoint because of a partial one.

:func:`check_training_arguments` refuses nonsensical numeric ``TrainingArguments`` before anything is created.

:func:`save_trained` writes the finished model (not a training checkpoint) as a vanilla ``from_pretrained``
folder, atomically, also when it is sharded across processes (FSDP, DeepSpeed ZeRO-3).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch

from .checkpoints import (MARKER, TRAINER_STATE, CheckpointError, complete_checkpoints, is_complete_checkpoint,
                          last_good_checkpoint, latest_complete_checkpoint, numbered_checkpoints)
from .data import Blocks, ResumableSampler
from .data.streaming import StreamingBlocks
from .distributed import check_global_batch, enable_fsdp_on_cpu
from .errors import MinitronError
from .outputs import (CHECKPOINT_PREFIX, DIVERGED_CHECKPOINT_PREFIX, TMP_CHECKPOINT_PREFIX, checkpoint_step,
                      write_checkpoint_atomically)
from .resume import (check_model_fits_checkpoint, load_renamed_weights, parse_resume_flag, preempted,
                     resolve_resume, watch_preemption)
from .storage import no_space, torch_write_failed

logger = logging.getLogger(__name__)


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed (e.g. the disk is full); the partial checkpoint was removed."""


class TrainingArgumentsError(MinitronError):
    """A numeric training option outside its valid range; the message names the field and what is allowed."""


class TrainingDivergedError(MinitronError, FloatingPointError):
    """The loss or the weights became NaN/inf: training stopped, and nothing non-finite was saved.

    ``step``, ``loss`` (a float, or None), ``checkpoint`` (the newest checkpoint whose weights are finite,
    a Path, or None), ``output_dir`` (Path), ``reason`` (what happened) and ``hint`` (how to go on) are
    attributes; :meth:`with_hint` makes the same error with another hint (e.g. for ``minitron run``).
    """

    def __init__(self, step: int, loss: float | None, checkpoint: Path | None, output_dir: Path | str,
                 reason: str | None = None, hint: str | None = None, set_aside: tuple = ()):
        self.step, self.loss = step, loss
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.output_dir = Path(output_dir)
        self.reason = reason or f"loss is {_fmt(loss)} at step {step}"
        self.set_aside = tuple(Path(p) for p in set_aside)
        if hint is None:
            hint = ("lower the learning rate or check the data, then "
                    + (f"resume with --resume-from-checkpoint {self.checkpoint} --learning-rate <lower>"
                       if self.checkpoint else "start again"))
        self.hint = hint
        where = (f"the last good checkpoint (finite weights, and training went on from it) is {self.checkpoint}"
                 if self.checkpoint else f"there is no good checkpoint in {self.output_dir}")
        one = len(self.set_aside) == 1
        names = (p.name.replace(DIVERGED_CHECKPOINT_PREFIX, CHECKPOINT_PREFIX, 1) for p in self.set_aside)
        aside = (f" ({', '.join(names)}, finite but "
                 f"where the divergence started, {'was' if one else 'were'} renamed "
                 f"{', '.join(p.name for p in self.set_aside)} so that no resume picks {'it' if one else 'them'})"
                 if self.set_aside else "")
        super().__init__(f"{self.reason}; stopping, nothing non-finite was saved; {where}{aside}; {hint}")

    def with_hint(self, hint: str) -> "TrainingDivergedError":
        return TrainingDivergedError(self.step, self.loss, self.checkpoint, self.output_dir, self.reason, hint,
                                     self.set_aside)

    def __reduce__(self):
        return (TrainingDivergedError, (self.step, self.loss, self.checkpoint, self.output_dir, self.reason,
                                        self.hint, self.set_aside))


def _fmt(x) -> str:
    return "unknown" if x is None else f"{x:.6g}" if isinstance(x, float) and math.isfinite(x) else str(x)


# --------------------------------------------------------------------------------------------------
# TrainingArguments numbers
# --------------------------------------------------------------------------------------------------

def _is_int(v: float) -> bool:
    return math.isfinite(v) and v == int(v)


_STEPS = "> 0 (a number of steps, or a fraction of the total steps below 1)"
_RULES = (  # field, valid?, what is allowed
    ("max_steps", lambda v: v == -1 or (v >= 1 and _is_int(v)),
     "a whole number of optimizer steps >= 1, or -1 to train num_train_epochs epochs"),
    ("num_train_epochs", lambda v: 0 < v < math.inf, "a number > 0"),
    ("learning_rate", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("per_device_train_batch_size", lambda v: v >= 1 and _is_int(v), "a whole number >= 1"),
    ("per_device_eval_batch_size", lambda v: v >= 1 and _is_int(v), "a whole number >= 1"),
    ("gradient_accumulation_steps", lambda v: v >= 1 and _is_int(v), "a whole number >= 1"),
    ("eval_accumulation_steps", lambda v: v >= 1 and _is_int(v), "a whole number >= 1 (or unset)"),
    ("save_steps", lambda v: 0 < v < math.inf, _STEPS),
    ("eval_steps", lambda v: 0 < v < math.inf, _STEPS + " (or unset)"),
    ("logging_steps", lambda v: 0 < v < math.inf, _STEPS),
    ("warmup_steps", lambda v: 0 <= v < math.inf, ">= 0 (a number of steps, or a fraction of the total steps below 1)"),
    ("warmup_ratio", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("weight_decay", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("max_grad_norm", lambda v: 0 <= v < math.inf, "a finite number >= 0 (0 disables clipping)"),
    ("adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_epsilon", lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    ("label_smoothing_factor", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("save_total_limit", lambda v: v >= 0 and _is_int(v), "a whole number >= 1 (or unset for no limit)"),
    ("dataloader_num_workers", lambda v: v >= 0 and _is_int(v), "a whole number >= 0"),
    ("seed", lambda v: 0 <= v < 2**32 and _is_int(v), "a whole number in [0, 2**32)"),
    ("data_seed", lambda v: 0 <= v < 2**32 and _is_int(v), "a whole number in [0, 2**32) (or unset)"),
)


def check_training_arguments(args) -> None:
    """Refuse nonsensical numeric ``TrainingArguments`` (any subclass: ours, TRL's SFT/DPO configs) with one
    :class:`TrainingArgumentsError` naming every bad field and what it allows; call it first thing in
    ``__post_init__``, before anything is created. Also normalises ``resume_from_checkpoint`` given as a
    string ("true" -> True, "false"/"" -> None, see :func:`~minitron_hf.resume.parse_resume_flag`)."""
    # transformers replaces a missing output_dir by ./trainer_output; the commands require one (require_output_dir)
    object.__setattr__(args, "output_dir_given", bool(args.output_dir))
    bad = []
    for name, ok, allowed in _RULES:
        v = getattr(args, name, None)
        if v is None or isinstance(v, bool):
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue  # not a number: left to TrainingArguments' own checks
        if math.isnan(x) or not ok(x):
            bad.append(f"{name}={v!r} (must be {allowed})")
    if bad:
        raise TrainingArgumentsError("invalid training option" + ("s: " if len(bad) > 1 else ": ") + "; ".join(bad))
    if hasattr(args, "resume_from_checkpoint"):
        args.resume_from_checkpoint = parse_resume_flag(args.resume_from_checkpoint)
    check_global_batch(args)


# --------------------------------------------------------------------------------------------------
# Writing checkpoints: the mixin
# --------------------------------------------------------------------------------------------------

def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory, under ``root`` (best effort: not every filesystem allows it)."""
    try:
        for dirpath, _, files in os.walk(root):
            for f in files:
                fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for dirpath, _, _ in os.walk(root):
            _fsync_dir(Path(dirpath))
    except OSError as e:
        logger.debug("fsync of %s failed: %s", root, e)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p  # FSDP2 DTensor: this process's shard


class CheckpointMixin:
    """Mix in before the Trainer class (``class T(CheckpointMixin, Trainer)``, also TRL's trainers): atomic,
    finite-only checkpoints, resume from the newest complete one, rotation that counts complete ones only,
    and a stop with :class:`TrainingDivergedError` on a NaN/inf loss or weights.

    Subclasses may override :meth:`_save_extra_checkpoint_state` (called inside the temporary folder, before
    it becomes ``checkpoint-N``) and :meth:`_load_extra_checkpoint_state` (called with the resolved checkpoint
    before ``Trainer.train`` resumes from it)."""

    #: raise TrainingDivergedError when a training step's loss is NaN/inf
    stop_on_nonfinite_loss: bool = True
    _ckpt_staging: str | None = None
    _ckpt_pending_push: str | None = None
    _last_loss: torch.Tensor | None = None

    # ------------------------------------------------------------------------------ accelerator
    @property
    def sharded(self) -> bool:
        """FSDP or DeepSpeed: the model is placed and sharded only inside ``train()``, and saving it gathers."""
        return bool(getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False))

    def create_accelerator_and_postprocess(self):
        """The Trainer's accelerator; on CPU-only machines an FSDP launch really shards (see
        :func:`minitron_hf.distributed.enable_fsdp_on_cpu`)."""
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator, self.args):
            self.is_fsdp_enabled = True

    # ------------------------------------------------------------------------------ hooks
    def _save_extra_checkpoint_state(self, checkpoint_dir: Path) -> None:
        """Write more state into ``checkpoint_dir`` (still the temporary folder); every process calls it."""

    def _load_extra_checkpoint_state(self, checkpoint_dir: Path) -> None:
        """Load what :meth:`_save_extra_checkpoint_state` wrote, before training resumes."""

    # ------------------------------------------------------------------------------ data position
    # A run reads a :class:`~minitron_hf.data.Blocks` dataset (any sample found from its index) or a stateful
    # stream (``state_dict``/``load_state_dict``, :mod:`minitron_hf.data.streaming`). Either way a resume starts
    # at the next unseen sample directly; the Trainer's own skip (iterating over the first N steps' batches) is off.
    _data_start: int = 0

    def _samples_per_step(self) -> int:
        a = self.args
        return a.per_device_train_batch_size * a.gradient_accumulation_steps * max(a.world_size, 1)

    def _get_train_sampler(self, train_dataset=None):
        ds = self.train_dataset if train_dataset is None else train_dataset
        if isinstance(ds, Blocks):
            return ResumableSampler(len(ds), start=min(self._data_start, len(ds)))
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self):
        """A stream (:class:`~minitron_hf.data.streaming.StreamingBlocks`) is already this rank's own: read it in this
        process, as it comes, without accelerate dispatching rank 0's batches or re-sharding them (the Trainer moves
        each batch to the device). Everything else: the Trainer's own loader."""
        if isinstance(self.train_dataset, StreamingBlocks):
            return torch.utils.data.DataLoader(self.train_dataset, batch_size=self._train_batch_size,
                                               collate_fn=self.data_collator, num_workers=0)
        return super().get_train_dataloader()

    def _stateful_data(self):
        ds = self.train_dataset
        return ds if hasattr(ds, "state_dict") and hasattr(ds, "load_state_dict") else None

    def _save_data_state(self, checkpoint_dir: Path) -> None:
        """A stateful stream's position after the samples this process consumed, into ``data_state_rank<R>.json``
        of the checkpoint (every process writes its own)."""
        ds = self._stateful_data()
        if ds is None:
            return
        consumed = self.state.global_step * self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        (checkpoint_dir / f"data_state_rank{self.args.process_index}.json").write_text(
            json.dumps(ds.state_dict(consumed=consumed)))

    def _resume_data_position(self, ckpt) -> int:
        """Samples of the train dataset consumed before ``ckpt`` (0 for a fresh run); restores a stream's state."""
        if ckpt is None:
            return 0
        ds = self.train_dataset
        state_file = Path(ckpt) / TRAINER_STATE
        step = int(json.loads(state_file.read_text()).get("global_step", 0)) if state_file.is_file() else 0
        if isinstance(ds, Blocks):
            self.args.ignore_data_skip = True
            start = step * self._samples_per_step()
            logger.info("resuming the data at sample %d of %d (step %d): no batch before it is read again", start,
                        len(ds), step)
            return start
        if self._stateful_data() is not None:
            f = Path(ckpt) / f"data_state_rank{self.args.process_index}.json"
            if not f.is_file():
                raise CheckpointError(f"{ckpt} has no {f.name}: it was not written by a streaming run of this "
                                      f"world size; resume with the same data and number of processes")
            ds.load_state_dict(json.loads(f.read_text()))
            self.args.ignore_data_skip = True
            logger.info("resuming the data stream from %s (step %d)", f, step)
        return 0

    # ------------------------------------------------------------------------------ divergence
    def _weights_are_finite(self) -> bool:
        """One reduction over the trainable parameters (this process's shards), agreed by every process."""
        flags = [torch.isfinite(_local(p)).all() for p in self.model.parameters() if p.requires_grad and p.numel()]
        ok = (torch.stack(flags).all() if flags else torch.tensor(True)).to(torch.int32).reshape(1)
        n = getattr(self.accelerator, "num_processes", 1)
        if n > 1:  # every process takes part, also one without local parameters
            ok = self.accelerator.reduce(ok.to(self.args.device), reduction="sum")
            return int(ok.item()) == n
        return bool(ok.item())

    def _last_loss_value(self) -> float | None:
        return None if self._last_loss is None else float(self._last_loss.float().mean())

    def _diverged(self, reason: str, step: int, loss: float | None) -> TrainingDivergedError:
        out = Path(self.args.output_dir)
        good = last_good_checkpoint(out, diverged_at=step)
        aside = [p for n, p in numbered_checkpoints(out) if n > step - 2]  # the divergence started from these
        if self.args.should_save:
            moved = []
            for p in aside:
                dest = p.with_name(f"{DIVERGED_CHECKPOINT_PREFIX}-{checkpoint_step(p)}")
                while dest.exists():
                    dest = dest.with_name(dest.name + "-again")
                p.rename(dest)
                moved.append(dest)
                logger.warning("%s: training diverged from it; renamed %s (kept, never resumed)", p, dest.name)
            aside = moved
        return TrainingDivergedError(step=step, loss=loss, checkpoint=good, output_dir=out, reason=reason,
                                     set_aside=tuple(aside))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._last_loss = loss.detach()
        if self.stop_on_nonfinite_loss and not torch.isfinite(self._last_loss).all():
            value = self._last_loss_value()
            step = self.state.global_step + 1
            raise self._diverged(f"loss is {_fmt(value)} at step {step}", step, value)
        return loss

    # ------------------------------------------------------------------------------ saving
    def _get_output_dir(self, trial):
        if self._ckpt_staging is not None:  # Trainer._save_checkpoint writes into <staging>/checkpoint-N
            return self._ckpt_staging
        return super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder):
        if self._ckpt_staging is not None:  # push the final folder once it is in place
            self._ckpt_pending_push = checkpoint_folder
            return None
        return super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model, trial):
        run_dir = Path(self._get_output_dir(trial))
        step = self.state.global_step
        name = f"{CHECKPOINT_PREFIX}-{step}"
        if not self._weights_are_finite():
            loss = self._last_loss_value()
            raise self._diverged(f"the weights are not finite after step {step} (last loss {_fmt(loss)}); "
                                 f"{name} was not written", step, loss)
        staging = run_dir / f"{TMP_CHECKPOINT_PREFIX}-{step}"
        tmp = staging / name
        self._ckpt_staging, self._ckpt_pending_push = str(staging), None
        try:
            super()._save_checkpoint(model, trial)
            self._save_extra_checkpoint_state(tmp)
            self._save_data_state(tmp)
            if self.args.should_save:
                best = self.state.best_model_checkpoint
                if best and Path(best).parent == staging:  # Trainer looked for the best one in the staging folder
                    self.state.best_model_checkpoint = str(run_dir / Path(best).name)
                    self.state.save_to_json(str(tmp / TRAINER_STATE))
                (tmp / MARKER).write_text(json.dumps({"step": step, "finite": True}))
                _fsync_tree(tmp)
        except Exception as e:
            self._ckpt_staging = None
            full = no_space(e, staging)  # while the partial files still fill the disk (torch's errors say nothing)
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            newest = latest_complete_checkpoint(run_dir, log=False)
            then = (f"then resume from the newest complete checkpoint, {newest.name}, with --resume-from-checkpoint "
                    f"true" if newest else "no complete checkpoint was written yet: then start again")
            if full:
                raise CheckpointSaveError(f"no space left on the device of {run_dir} while saving {name} (the partial "
                                          f"{name} was removed); free space or lower save_total_limit; {then}") from e
            if isinstance(e, OSError) or torch_write_failed(e):
                raise CheckpointSaveError(f"could not write {name} in {run_dir}: {e} (the partial {name} was "
                                          f"removed); {then}") from e
            raise
        except BaseException:  # KeyboardInterrupt: leave no partial folder behind either
            self._ckpt_staging = None
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._ckpt_staging = None
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG states, shards)
        final = run_dir / name
        if self.args.should_save:
            self._put_in_place(tmp, final)
            self._rotate_complete_checkpoints(run_dir, keep=final)
        if self._ckpt_pending_push is not None:
            self._ckpt_pending_push = None
            super()._push_from_checkpoint(str(final))

    @staticmethod
    def _put_in_place(tmp: Path, final: Path) -> None:
        """Rename the finished ``tmp`` to ``final`` (replacing an older folder of that name), then drop the
        empty staging folder."""
        old = None
        if final.exists():  # e.g. a partial folder of a killed run, or the same step saved again after a resume
            old = final.parent / f"{TMP_CHECKPOINT_PREFIX}-{checkpoint_step(final)}-old"
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp.parent, ignore_errors=True)

    def _rotate_complete_checkpoints(self, run_dir: Path, keep: Path) -> None:
        """``save_total_limit`` over complete checkpoints only (oldest step first), never the one just written
        nor the best one; partial folders neither count nor are deleted."""
        limit = self.args.save_total_limit
        if not limit or limit <= 0:
            return
        complete = complete_checkpoints(run_dir)
        protected = {keep.resolve()}
        if self.state.best_model_checkpoint:
            protected.add(Path(self.state.best_model_checkpoint).resolve())
        excess = len(complete) - max(limit, len(protected))
        for p in complete:
            if excess <= 0:
                break
            if p.resolve() not in protected:
                logger.info("deleting older checkpoint %s (save_total_limit=%s)", p, limit)
                shutil.rmtree(p, ignore_errors=True)
                excess -= 1

    # ------------------------------------------------------------------------------ training
    def _load_optimizer_and_scheduler(self, checkpoint):
        """Resume with the learning rate asked for now: the Trainer restores the optimizer's and scheduler's learning
        rates from the checkpoint, so "lower the learning rate, then resume" (the advice after a divergence) would
        silently train on at the old one. The restored schedule is rescaled to ``args.learning_rate`` (same shape,
        same position), and the log says so."""
        super()._load_optimizer_and_scheduler(checkpoint)
        sched = getattr(self, "lr_scheduler", None)
        base = list(getattr(sched, "base_lrs", None) or [])
        want = float(self.args.learning_rate)
        if checkpoint is None or not base or not base[0] or math.isclose(base[0], want, rel_tol=1e-9):
            return
        scale = want / base[0]
        sched.base_lrs = [b * scale for b in base]
        for g in self.optimizer.param_groups:
            g["lr"] *= scale
            if "initial_lr" in g:
                g["initial_lr"] *= scale
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        logger.warning("resuming from %s with learning_rate=%g; the checkpoint was trained with %g: the learning-rate "
                       "schedule is rescaled from step %d on", checkpoint, want, base[0], self.state.global_step)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The Trainer's load, except where it would silently load nothing or no expert (on-disk names that are not
        the model's own: :func:`~minitron_hf.resume.load_renamed_weights`)."""
        if self.sharded or not load_renamed_weights(model if model is not None else self.model,
                                                    resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        ckpt = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        out = Path(self.args.output_dir)
        if self.args.should_save and out.is_dir():  # saves a kill interrupted: never useful
            for p in out.glob(f"{TMP_CHECKPOINT_PREFIX}-*"):
                logger.info("removing %s, an unfinished checkpoint save of an earlier run", p)
                shutil.rmtree(p, ignore_errors=True)
        if ckpt is not None:  # a checkpoint of another shape: named here, not a RuntimeError from load_state_dict
            check_model_fits_checkpoint(ckpt, self.model, "the model being trained")
            self._load_extra_checkpoint_state(Path(ckpt))
        self._data_start = self._resume_data_position(ckpt)
        with watch_preemption(self) as jit:  # enable_jit_checkpoint: SIGTERM saves, then train() returns early
            result = super().train(ckpt, *args, **kwargs)
        if jit.step is not None:
            ckpt = Path(self.args.output_dir) / f"{CHECKPOINT_PREFIX}-{jit.step}"
            raise preempted(self, jit.step, ckpt if is_complete_checkpoint(ckpt) else None)
        if not self._weights_are_finite():
            loss = self._last_loss_value()
            step = self.state.global_step
            raise self._diverged(f"the weights are not finite at the end of training (step {step}, last loss "
                                 f"{_fmt(loss)})", step, loss)
        return result


# --------------------------------------------------------------------------------------------------
# The finished model
# --------------------------------------------------------------------------------------------------

def save_trained(trainer, tokenizer, final: Path, finalize=None, extra=None) -> Path:
    """Write a finished Trainer's model with its tokenizer to ``final`` as a vanilla checkpoint that
    ``from_pretrained`` loads, atomically, from the main process; the others wait until it is there.

    Under FSDP and DeepSpeed every process first takes part in gathering the full state dict (FSDP2's
    sharded parameters, ZeRO-3's partitions; ZeRO-3 needs ``stage3_gather_16bit_weights_on_model_save``).
    The gathered tensors are copies, so tied weights (lm_head = embed_tokens) are tied again before writing,
    or the head would be written twice. ``finalize(model)`` gives the model to save (e.g. LoRA merged; not
    under sharding); ``extra(tmp_dir)`` writes more files into the folder before it is put in place."""
    acc = trainer.accelerator
    state_dict = None
    if trainer.sharded:  # CheckpointMixin, which every trainer of the project mixes in
        state_dict = acc.get_state_dict(trainer.model_wrapped)  # collective: every process
    if acc.is_main_process:
        model = acc.unwrap_model(trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model)
        if finalize is not None:
            model = finalize(model)
        if state_dict is not None:
            for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
                if target in state_dict and source in state_dict:
                    state_dict[target] = state_dict[source]

        def write(d):
            model.save_pretrained(d, state_dict=state_dict)
            tokenizer.save_pretrained(d)
            if extra is not None:
                extra(Path(d))

        write_checkpoint_atomically(final, write)
    acc.wait_for_everyone()
    return Path(final)
