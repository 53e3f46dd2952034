"""Running on many processes (``accelerate launch``): the process state, FSDP2 and DeepSpeed on CPU processes, the
global batch, collective timeouts.

- :func:`process_state`: accelerate's process state (main process, barriers) outside a Trainer, with a timeout.
- :func:`connect_cpu_processes`: the trainers' configs connect CPU processes with their ``ddp_timeout``.
- :func:`enable_fsdp_on_cpu`: called by :class:`~minitron_hf.training.CheckpointMixin` (every trainer:
  distillation, teacher correction, SFT, RPO) right after the Trainer creates its accelerator.
- :func:`connect_deepspeed_on_cpu`: DeepSpeed's communication on the gloo group, before ``from_pretrained``.
- :func:`check_global_batch`: ``global_batch_size`` against per device x accumulation x processes.
- :func:`all_reduce_sum`: a sum over the data-parallel processes, a no-op in one process (calibration's scores).

How the chunked KD loss reads sharded LM heads is in ``distill/trainer.py`` (``DistillationTrainer._head``);
how a sharded model becomes a plain checkpoint is ``training.save_trained``.

Facts this module relies on (accelerate 1.15, torch 2.13, checked on a 2-core CPU machine):

- ``torch.distributed.fsdp.fully_shard`` (FSDP2) runs on CPU tensors over gloo: parameters become
  ``DTensor`` shards and training matches one process.
- accelerate turns an FSDP config into ``DistributedType.FSDP`` only for accelerator devices: in
  ``AcceleratorState.__init__`` the FSDP branch is reached from ``MULTI_GPU``/``MULTI_XPU``/... but not
  ``MULTI_CPU``, so ``accelerate launch`` with ``distributed_type: FSDP`` and ``use_cpu: true`` silently
  trains plain DDP over gloo. :func:`enable_fsdp_on_cpu` makes the one switch accelerate makes for GPUs,
  so the same FSDP2 code path (``fsdp2_prepare_model``, sharded checkpoints) runs in the CPU tests.
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from .errors import MinitronError

logger = logging.getLogger(__name__)


class DistributedConfigError(MinitronError):
    """The processes, batch sizes or sharding settings do not fit together."""


def fsdp_requested(args=None) -> bool:
    """True when the launch (``accelerate launch`` with an FSDP config sets ``ACCELERATE_USE_FSDP``) or the
    TrainingArguments (``fsdp=...``) ask for FSDP."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
            or bool(getattr(args, "fsdp_plugin_args", None)))


def enable_fsdp_on_cpu(accelerator, args=None) -> bool:
    """Under ``accelerate launch`` with an FSDP config on a machine without an accelerator, switch the
    accelerator's state from DDP over gloo (``MULTI_CPU``) to FSDP, with the plugin the config describes.
    Returns True when it switched. Only FSDP2 is supported here (FSDP1's CPU path is not)."""
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or not fsdp_requested(args):
        return False
    plugin_args = getattr(args, "fsdp_plugin_args", None) or {}
    plugin = FullyShardedDataParallelPlugin(**plugin_args)  # reads FSDP_* from the environment as accelerate does
    if plugin.fsdp_version != 2:
        raise DistributedConfigError(f"fsdp_version={plugin.fsdp_version}: FSDP on CPU processes runs with "
                                     f"fsdp_version: 2 only (recipes/accelerate/fsdp2-cpu.yaml)")
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # as AcceleratorState.__init__ does: a later AcceleratorState() copies the PartialState's distributed_type
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP2 on %d CPU processes over gloo (accelerate selects FSDP for accelerator devices only; "
                "switched from DDP)", state.num_processes)
    return True


def world_size_from_env() -> int:
    """Processes of this launch as the launcher announces them (``accelerate launch``, torchrun, SLURM's srun
    with torchrun set ``WORLD_SIZE``); 1 when not launched."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


GLOBAL_BATCH_HELP = ("sequences per optimizer step over all processes that this config is meant for (e.g. the "
                     "paper's 1152 or 768); when set, a launch where per_device_train_batch_size x "
                     "gradient_accumulation_steps x processes differs is refused before anything loads")


def check_global_batch(args, world_size: int | None = None) -> None:
    """Refuse a launch whose global batch (per device x accumulation x processes) differs from the
    ``global_batch_size`` the config declares; the message gives the accumulation that would fit."""
    want = getattr(args, "global_batch_size", None)
    if want is None:
        return
    world = world_size or world_size_from_env()
    per, acc = args.per_device_train_batch_size, args.gradient_accumulation_steps
    got = per * acc * world
    if int(want) != want or want < 1:
        raise DistributedConfigError(f"global_batch_size={want!r} must be a whole number >= 1")
    if got == want:
        return
    fit = want / (per * world)
    hint = (f"set gradient_accumulation_steps={int(fit)}" if fit == int(fit) and fit >= 1 else
            f"no gradient_accumulation_steps fits with per_device_train_batch_size={per} on {world} processes: "
            f"change per_device_train_batch_size or the number of processes")
    raise DistributedConfigError(
        f"global_batch_size={want} but per_device_train_batch_size={per} x gradient_accumulation_steps={acc} x "
        f"{world} process{'es' if world > 1 else ''} = {got}; {hint} (or change global_batch_size)")


def process_state(timeout_s: float | None = None):
    """accelerate's process state: the N processes of ``accelerate launch`` (gloo on CPU-only machines), else one.
    Use it for ``is_main_process`` and ``wait_for_everyone()`` outside a Trainer.

    ``timeout_s``: how long a collective waits for the other processes before failing (the process group's
    timeout), applied by the first call of a process only: the group is created once."""
    kw = {}
    if timeout_s is not None and not PartialState._shared_state:
        kw["timeout"] = datetime.timedelta(seconds=timeout_s)
    return PartialState(cpu=not torch.cuda.is_available(), **kw)


def connect_cpu_processes(args) -> None:
    """On a machine without an accelerator, connect the ``accelerate launch`` processes (gloo) with the
    TrainingArguments' ``ddp_timeout``: transformers passes that timeout to the process group only on GPUs, and on
    CPU a rank that hung would keep the others waiting for torch's default of 30 minutes."""
    if world_size_from_env() > 1:
        process_state(args.ddp_timeout)


def connect_deepspeed_on_cpu(args) -> None:
    """DeepSpeed on CPU processes: accelerate connects them over gloo itself (``use_cpu``), but DeepSpeed's own
    communication layer stays unconnected, so ``zero.Init`` (ZeRO-3 loading of a model inside
    ``from_pretrained``) would see a world of one process. Connect it to the same process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        args.device  # noqa: B018 -- sets up the process group (TrainingArguments._setup_devices)
    if torch.distributed.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed in place over the data-parallel processes (each scored its own shard of the calibration data);
    ``t`` unchanged when ``torch.distributed`` is not initialized (one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t
