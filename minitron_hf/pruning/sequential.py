"""Calibration of models larger than memory: one decoder layer at a time, weights streamed from disk.

The model is built on the meta device: no weight is allocated. Its safetensors files stay on disk and are
read tensor by tensor. Each decoder layer in turn is loaded onto the device, run over every calibration
batch, scored and released. Between layers, the layer inputs of every batch (the residual stream) are
cached on the device, in CPU memory, or on disk when they do not fit (``activation_cache``). Peak memory is
about one layer plus the cached activations, whatever the depth of the model (llm-compressor's sequential
pipeline does the same for quantization). The model is :class:`.layerwise.LayerwiseModel`, the cache
:class:`.activation_cache.ActivationCache`; this module decides when to run this way and runs the passes.

What runs this way, and what it equals:

- **Width importance** (heads, MLP neurons, hidden channels): the hooks of :class:`.importance.WidthScores`
  on the one loaded layer. Every layer sees the same inputs as in memory, so the scores are the in-memory
  scores up to fp32 summation order.
- **Block influence**: ``1 - cos(h_s, h_{s+k})`` from the boundary states of the unpruned model; the last
  ``k + 1`` boundaries are cached.
- **Block-skip LM loss** (the default depth metric): the boundary state ``h_s`` is exactly the input of the
  model that skips layers ``s .. s+k-1`` at layer ``s+k``. So each candidate block starts from a cached
  boundary and runs only the layers after its block, and each layer is loaded once for all candidates.
  Cost in layer forwards for ``L`` layers and blocks of ``k``: ``L + (L-k)(L-k+1)/2`` (the unpruned pass,
  then each candidate ``s`` runs ``L-s-k`` layers), against ``L + (L-k+1)(L-k)`` in memory, where every
  candidate runs its whole remaining model. Memory: up to ``L + 1`` cached streams at the last layer.
- **Task metric** (lm-eval): needs the whole model for the harness; refused in this mode.

The arguments of each decoder layer (rotary cos/sin, the causal mask of that layer's attention type,
position ids) come from the model's own forward: its layers are swapped for recorders that store what
they are called with. No family's mask or rotary rules are copied here.

Under ``accelerate launch`` each process streams the same layers over its own calibration shard and the
accumulators are all-reduced at the end, as in memory.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import one_of
from ..distributed import all_reduce_sum
from .activation_cache import GiB, ActivationCache, Stream, available_memory
from .depth import DepthError
from .importance import WidthScores, as_batches, batch_tokens
from .layerwise import LayerwiseModel, SequentialError, model_bytes

logger = logging.getLogger(__name__)

CACHE_KINDS = ("auto", "device", "cpu", "disk")


@dataclass
class SequentialOptions:
    """How calibration runs when the model may not fit the device (``minitron prune`` and ``minitron importance``)."""

    sequential: bool | None = field(default=None, metadata={
        "help": "calibrate one decoder layer at a time with the weights streamed from the safetensors files "
                "(models larger than memory); default: on when the model does not fit the device's memory"})
    activation_cache: str = field(default="auto", metadata={
        "help": "sequential mode: where the layer inputs are cached between layers; auto = the device if they "
                "fit, else CPU memory, else disk", "choices": list(CACHE_KINDS)})
    offload_dir: str | None = field(default=None, metadata={
        "help": "sequential mode: folder of the disk activation cache (default: beside the output); removed "
                "afterwards"})
    memory_limit_gb: float | None = field(default=None, metadata={
        "help": "memory calibration may use on the device, in GiB (default: what is free now); a larger model "
                "is calibrated sequentially"})

    def __post_init__(self):  # a subclass's __post_init__ calls this one first
        one_of("activation_cache", self.activation_cache, CACHE_KINDS, error=SequentialError)
        if self.memory_limit_gb is not None and not self.memory_limit_gb > 0:
            raise SequentialError(f"memory_limit_gb={self.memory_limit_gb} must be > 0 (or unset: what is free)")


def check_inputs(opts: SequentialOptions) -> None:
    """The checks of :class:`SequentialOptions` that look at the disk (its values are checked when it is made)."""
    if opts.offload_dir is not None and Path(opts.offload_dir).exists() and not Path(opts.offload_dir).is_dir():
        raise SequentialError(f"offload_dir={opts.offload_dir!r} is a file; give a folder")



def _local_processes() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def decide_sequential(opts: SequentialOptions, src: Path, dtype: torch.dtype, device: torch.device) -> bool:
    """``opts.sequential`` when given; otherwise sequential exactly when the weights in ``dtype`` take more than
    90% of the memory the device has for this process (``memory_limit_gb``, or what is free now shared by the
    processes of this machine). The choice is logged with its numbers. Under ``torch.distributed`` every process
    calls it and all take the same path."""
    need = model_bytes(src, dtype)
    if opts.memory_limit_gb is not None:
        have, where = int(opts.memory_limit_gb * GiB), f"memory_limit_gb={opts.memory_limit_gb:g}"
    else:
        have = available_memory(device) // _local_processes()
        where = f"free on {device.type}" + (f" per process ({_local_processes()} here)" if _local_processes() > 1 else "")
    if opts.sequential is not None:
        logger.info("calibration %s (sequential=%s; the weights take %.2f GiB in %s, %.2f GiB %s)",
                    "layer by layer" if opts.sequential else "in memory", opts.sequential, need / GiB,
                    str(dtype).removeprefix("torch."), have / GiB, where)
        return bool(opts.sequential)
    seq = need > 0.9 * have
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every process must take the same path (the two run different collectives): sequential if any needs it
        flag = torch.tensor([int(seq)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        seq = bool(flag.item())
    logger.info("the weights take %.2f GiB in %s and %.2f GiB are %s: %s", need / GiB, str(dtype).removeprefix("torch."),
                have / GiB, where, "switching to sequential calibration, one layer at a time" if seq
                else "calibrating in memory")
    return seq


# --------------------------------------------------------------------------------------------------
# The passes
# --------------------------------------------------------------------------------------------------

def _one_minus_cos_sum(a: torch.Tensor, b: torch.Tensor) -> float:
    return (1 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)).sum().item()


def _batch_bytes(batches: list[dict], hidden: int, dtype: torch.dtype) -> list[int]:
    item = torch.empty((), dtype=dtype).element_size()
    return [b["input_ids"].numel() * hidden * item for b in batches]


@dataclass
class SequentialPlan:
    """What one sequential calibration computes, and where its cache goes."""

    aggregation: str | None = None  # width importance when set
    influence_block: int = 0  # block influence for blocks of this many layers when > 0
    loss_block: int = 0  # the block-skip LM-loss scan for blocks of this many layers when > 0
    batch_size: int = 8
    activation_cache: str = "auto"
    offload_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    memory_limit: int | None = None
    progress: bool = True


@torch.no_grad()
def calibrate(lw: LayerwiseModel, calib, val, plan: SequentialPlan) -> dict:
    """Run the passes ``plan`` asks for; returns ``{"importance", "block_influence", "layer_influence",
    "baseline_loss", "lm_loss", "cache"}`` (absent keys: not asked for)."""
    L = lw.config.num_hidden_layers
    for k in (plan.influence_block, plan.loss_block):
        if k and not 1 <= k < L:
            raise DepthError(f"block_size={k} must be between 1 and num_hidden_layers - 1 = {L - 1}")
    out: dict = {"cache": []}

    def cache_for(batches, streams):
        return ActivationCache(plan.activation_cache, lw.device, _batch_bytes(batches, lw.config.hidden_size, lw.dtype),
                               streams, lw.layer_bytes, plan.offload_dir, plan.memory_limit)

    def groups(cache, batches, desc):
        n = len(cache.groups)
        for g, idx in enumerate(cache.groups):
            yield [batches[i] for i in idx], desc + (f" (batch group {g + 1}/{n})" if n > 1 else "")
            cache.release_all()

    if plan.aggregation or plan.influence_block:
        batches = as_batches(calib, plan.batch_size)
        k = plan.influence_block
        width = WidthScores(lw.config, plan.aggregation, lw.device) if plan.aggregation else None
        sums = {"block": torch.zeros(max(L - k + 1, 0), dtype=torch.float64),
                "layer": torch.zeros(L, dtype=torch.float64)}
        cache = cache_for(batches, k + 2 if k else 1)
        try:
            for group, desc in groups(cache, batches, "sequential importance"):
                _importance_pass(lw, group, cache, width, k, sums, desc, plan.progress)
        finally:
            cache.close()
        if width:
            width.tokens = sum(batch_tokens(b["input_ids"], b.get("attention_mask")) for b in batches)
            out["importance"] = width.result()
        if k:
            n_tok = float(sum(b["input_ids"].numel() for b in batches))
            total = all_reduce_sum(torch.cat([sums["block"], sums["layer"], torch.tensor([n_tok], dtype=torch.float64)]))
            n = total[-1].item()
            out["block_influence"] = (total[: L - k + 1] / n).tolist()
            out["layer_influence"] = (total[L - k + 1: -1] / n).tolist()
        out["cache"].append(cache.info)

    if plan.loss_block:
        batches = as_batches(val, plan.batch_size)
        k = plan.loss_block
        sums = torch.zeros(L - k + 3, dtype=torch.float64)  # unpruned, each block start, token count
        cache = cache_for(batches, L + 2)
        try:
            for group, desc in groups(cache, batches, f"sequential drop-{k} scan"):
                _loss_pass(lw, group, cache, k, sums, desc, plan.progress)
        finally:
            cache.close()
        sums = all_reduce_sum(sums)
        losses = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
        out["baseline_loss"], out["lm_loss"] = losses[0], losses[1:]
        out["cache"].append(cache.info)
    return out


def _start(lw: LayerwiseModel, batches: list[dict], cache: ActivationCache) -> tuple[Stream, list[list[dict]]]:
    """The embeddings of ``batches`` as a new stream, and each batch's arguments of every layer."""
    first, args = cache.new(), []
    for b, e in enumerate(lw.embed(batches)):
        mask = batches[b].get("attention_mask")
        args.append(lw.layer_arguments(e, None if mask is None else mask.to(lw.device)))
        first.put(b, e)
    return first, args


def _run(layer, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
    o = layer(h, **kwargs)
    return o[0] if isinstance(o, tuple) else o


def _importance_pass(lw, batches, cache, width, k: int, sums: dict, desc: str, progress: bool) -> None:
    """Width hooks and block influence over ``batches``, layer by layer; ``sums`` accumulate across groups."""
    masks = [None if b.get("attention_mask") is None else b["attention_mask"].to(lw.device) for b in batches]
    first, args = _start(lw, batches, cache)
    ring = {0: first}  # boundary index -> states (the input of that layer); k + 1 of them for block influence
    for i in tqdm(range(lw.config.num_hidden_layers), desc=desc, disable=not progress):
        with lw.layer(i) as layer:
            handles = width.attach(layer, i) if width else []
            nxt = cache.new() if k else ring[i]
            try:
                for b in range(len(batches)):
                    if width:
                        width.mask = masks[b]
                    h = ring[i].get(b)
                    o = _run(layer, h, args[b][i])
                    if k:
                        sums["layer"][i] += _one_minus_cos_sum(h, o)
                        if i + 1 - k >= 0:
                            sums["block"][i + 1 - k] += _one_minus_cos_sum(ring[i + 1 - k].get(b), o)
                    nxt.put(b, o)
            finally:
                for hd in handles:
                    hd.remove()
        if k:
            ring[i + 1] = nxt
            if i + 1 - k >= 0:  # boundary i+1-k has served its one block
                cache.release(ring.pop(i + 1 - k))
        else:
            ring[i + 1] = ring.pop(i)


def _loss_pass(lw, batches, cache, k: int, sums: torch.Tensor, desc: str, progress: bool) -> None:
    """Adds to ``sums`` the summed LM loss of the unpruned model and of the model without each block of ``k`` layers,
    and the token count, over ``batches``; see the module docstring."""
    L = lw.config.num_hidden_layers
    first, args = _start(lw, batches, cache)
    ring = {0: first}  # boundary index -> states of the unpruned model
    cands: dict[int, Stream] = {}  # block start s -> states of the model without layers s..s+k-1
    for j in tqdm(range(L), desc=desc, disable=not progress):
        if j - k >= 0:  # the model without layers j-k..j-1 enters layer j with the unpruned state h_{j-k}
            cands[j - k] = ring.pop(j - k)
        with lw.layer(j) as layer:
            nxt = cache.new()
            for b in range(len(batches)):
                nxt.put(b, _run(layer, ring[j].get(b), args[b][j]))
                for s in cands:
                    cands[s].put(b, _run(layer, cands[s].get(b), args[b][j]))
        ring[j + 1] = nxt
    cands[L - k] = ring.pop(L - k)  # dropping the last k layers: no layer after the block
    finals = [ring[L], *(cands[s] for s in range(L - k + 1))]
    with lw.head() as loss:
        for b, batch in enumerate(batches):
            ids = batch["input_ids"].to(lw.device)
            for n, stream in enumerate(finals):
                sums[n] += loss(stream.get(b)[:, :-1], ids[:, 1:])
            sums[-1] += ids.shape[0] * (ids.shape[1] - 1)
