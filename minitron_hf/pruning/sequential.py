"""Calibration of models larger than memory: one decoder layer at a time, weights streamed from disk.

The model is built on the meta device: no weight is allocated. Its safetensors files stay on disk and are
read tensor by tensor. Each decoder layer in turn is loaded onto the device, run over every calibration
batch, scored and released. Between layers, the layer inputs of every batch (the residual stream) are
cached on the device, in CPU memory, or on disk when they do not fit (``activation_cache``). Peak memory is
about one layer plus the cached activations, whatever the depth of the model (llm-compressor's sequential
pipeline does the same for quantization).

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

import contextlib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..arch import family_of
from ..errors import MinitronError
from ..model_files import read_weight_map

logger = logging.getLogger(__name__)

CACHE_KINDS = ("auto", "device", "cpu", "disk")
GiB = 2 ** 30


class SequentialError(MinitronError):
    """A checkpoint, option or machine that sequential calibration cannot work with; raised before calibration."""


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

    def check_sequential_options(self) -> None:
        if self.activation_cache not in CACHE_KINDS:
            raise SequentialError(f"activation_cache={self.activation_cache!r} is not one of {', '.join(CACHE_KINDS)}")
        if self.memory_limit_gb is not None and not self.memory_limit_gb > 0:
            raise SequentialError(f"memory_limit_gb={self.memory_limit_gb} must be > 0 (or unset: what is free)")
        if self.offload_dir is not None and Path(self.offload_dir).exists() and not Path(self.offload_dir).is_dir():
            raise SequentialError(f"offload_dir={self.offload_dir!r} is a file; give a folder")


# --------------------------------------------------------------------------------------------------
# The checkpoint on disk
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def checkpoint_tensors(src: Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors checkpoint (one file or an index with shards), from the headers only.

    A sharded checkpoint must be consistent: each tensor the index names is in the shard it names, exactly
    once, and no shard holds tensors the index does not name. Anything else is an error naming the tensor
    and the files, before any weight is read."""
    from safetensors import safe_open

    src = Path(src)
    index = src / "model.safetensors.index.json"

    def header(f: Path) -> dict[str, TensorInfo]:
        try:
            with safe_open(str(f), framework="pt") as h:
                return {k: TensorInfo(f, tuple(h.get_slice(k).get_shape()), h.get_slice(k).get_dtype())
                        for k in h.keys()}
        except Exception as e:
            raise SequentialError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})") from None

    if index.exists():
        weight_map = read_weight_map(index)
        out: dict[str, TensorInfo] = {}
        where: dict[str, Path] = {}
        for shard in sorted(set(weight_map.values())):
            for k, info in header(src / shard).items():
                if k in where:
                    raise SequentialError(f"checkpoint {src} is sharded inconsistently: tensor {k!r} is in both "
                                          f"{where[k].name} and {shard}")
                where[k] = info.file
                out[k] = info
        for k, shard in weight_map.items():
            if k not in out:
                raise SequentialError(f"checkpoint {src} is sharded inconsistently: {index.name} puts {k!r} in "
                                      f"{shard}, which does not hold it")
            if out[k].file.name != shard:
                raise SequentialError(f"checkpoint {src} is sharded inconsistently: {index.name} puts {k!r} in "
                                      f"{shard}, but it is in {out[k].file.name}")
        extra = sorted(set(out) - set(weight_map))
        if extra:
            raise SequentialError(f"checkpoint {src} is sharded inconsistently: {len(extra)} tensors are in the "
                                  f"shards but not in {index.name} (e.g. {extra[0]!r})")
        return out
    single = src / "model.safetensors"
    if not single.exists():
        others = sorted(p.name for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
        raise SequentialError(f"checkpoint {src} has no model.safetensors and no model.safetensors.index.json"
                              + (f" (found {', '.join(others)}; sequential calibration streams safetensors only: "
                                 f"re-save with save_pretrained)" if others else ""))
    return header(single)


def model_bytes(src: Path, dtype: torch.dtype) -> int:
    """Bytes of the checkpoint's weights once converted to ``dtype`` (what an in-memory load takes)."""
    item = torch.empty((), dtype=dtype).element_size()
    return sum(t.numel for t in checkpoint_tensors(src).values()) * item


def available_memory(device: torch.device) -> int:
    """Bytes free now: on a CUDA device its free memory; on the CPU MemAvailable (this machine's RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


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
# The activation cache
# --------------------------------------------------------------------------------------------------

class Stream:
    """One hidden state per calibration batch ([B, S, hidden]), kept on the device, in CPU memory or in a file.

    The disk kind reads and writes with ``pread``/``pwrite``: no mapping, so the cache never counts in the
    process's resident memory."""

    def __init__(self, kind: str, device: torch.device, folder: Path | None = None):
        self.kind, self.device = kind, device
        self.items: dict[int, torch.Tensor] = {}
        self.slots: dict[int, tuple[int, tuple[int, ...], torch.dtype]] = {}  # batch -> (offset, shape, dtype)
        self.fd = None
        if kind == "disk":
            fd, self.path = tempfile.mkstemp(dir=folder, suffix=".act")
            self.fd, self.end = fd, 0

    def put(self, b: int, t: torch.Tensor) -> None:
        if self.kind == "device":
            self.items[b] = t
        elif self.kind == "cpu":
            self.items[b] = t if t.device.type == "cpu" else t.to("cpu")
        else:
            data = t.detach().to("cpu").contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
            if b not in self.slots:
                self.slots[b] = (self.end, tuple(t.shape), t.dtype)
                self.end += len(data)
            off, shape, _ = self.slots[b]
            if tuple(t.shape) != shape:
                raise RuntimeError(f"activation cache: batch {b} changed shape {shape} -> {tuple(t.shape)}")
            os.pwrite(self.fd, data, off)

    def get(self, b: int) -> torch.Tensor:
        if self.kind != "disk":
            return self.items[b].to(self.device)
        off, shape, dtype = self.slots[b]
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        buf = bytearray(os.pread(self.fd, n, off))
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape).to(self.device)

    def close(self) -> None:
        self.items.clear()
        if self.fd is not None:
            os.close(self.fd)
            os.unlink(self.path)
            self.fd = None


class ActivationCache:
    """Creates the :class:`Stream` s of one calibration pass in one place (device, CPU or a temporary folder),
    chosen before the pass from the size it needs, and removes them all at the end.

    ``auto`` takes the device when every batch's streams fit there, else CPU memory. When they fit in neither, the
    batches are split into consecutive groups that fit, and the pass runs once per group: each layer is then read
    from disk once per group, which costs far less than writing and reading every activation once per layer (a
    Llama-3.1-8B layer is 0.4 GiB in bf16; the paper's 1024 x 4096 calibration tokens are 32 GiB of activations at
    every layer). The disk holds the cache only when asked (``disk``) or when not even one batch fits in memory.
    Accumulators see the batches in the same order either way, so the groups change no score."""

    def __init__(self, kind: str, device: torch.device, batch_bytes: list[int], streams: int, layer_bytes: int,
                 offload_dir: Path, memory_limit: int | None = None):
        stream_bytes = sum(batch_bytes)
        need = stream_bytes * streams
        self.groups = [list(range(len(batch_bytes)))]
        if kind == "auto":
            free = memory_limit if memory_limit is not None else available_memory(device)
            if device.type == "cpu":
                budgets = {"cpu": 0.5 * (free - 2 * layer_bytes)}
            else:  # the device first, then CPU memory
                budgets = {"device": 0.8 * (free - 2 * layer_bytes),
                           "cpu": 0.5 * available_memory(torch.device("cpu"))}
            fits = [k for k, b in budgets.items() if need <= b]
            if fits:
                kind = fits[0]
            else:
                kind, budget = max(budgets.items(), key=lambda kv: kv[1])
                if max(batch_bytes) * streams <= budget:
                    self.groups, size = [[]], 0
                    for b, n in enumerate(batch_bytes):
                        if self.groups[-1] and (size + n) * streams > budget:
                            self.groups.append([])
                            size = 0
                        self.groups[-1].append(b)
                        size += n
                else:
                    kind = "disk"
        if kind == "device" and device.type == "cpu":
            kind = "cpu"
        self.kind, self.device, self.folder = kind, device, None
        where = {"device": f"on {device}", "cpu": "in CPU memory", "disk": f"on disk in {offload_dir}"}[kind]
        if kind == "disk":
            offload_dir = Path(offload_dir)
            offload_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(offload_dir).free
            if need > free:
                raise SequentialError(
                    f"the activation cache needs {need / GiB:.2f} GiB ({streams} streams x {stream_bytes / GiB:.3f} GiB) "
                    f"but offload_dir={str(offload_dir)!r} has {free / GiB:.2f} GiB free; set offload_dir to a folder "
                    f"with more space, or use fewer calibration samples or a shorter seq_len")
            self.folder = Path(tempfile.mkdtemp(prefix=".minitron-activations-", dir=offload_dir))
        group_need = max(sum(batch_bytes[b] for b in g) for g in self.groups) * streams
        if len(self.groups) > 1:
            logger.info("activation cache %s: all batches would take %.1f MiB (%d streams x %.1f MiB), more than "
                        "fits; %d groups of batches of up to %.1f MiB each, every layer read once per group",
                        where, need / 2 ** 20, streams, stream_bytes / 2 ** 20, len(self.groups), group_need / 2 ** 20)
        else:
            logger.info("activation cache %s: up to %d streams x %.1f MiB = %.1f MiB", where, streams,
                        stream_bytes / 2 ** 20, need / 2 ** 20)
        self.info = {"kind": kind, "streams": streams, "stream_mib": round(stream_bytes / 2 ** 20, 2),
                     "groups": len(self.groups), "peak_mib": round(group_need / 2 ** 20, 2)}
        self.open: list[Stream] = []

    def new(self) -> Stream:
        s = Stream(self.kind, self.device, self.folder)
        self.open.append(s)
        return s

    def release(self, s: Stream) -> None:
        s.close()
        self.open.remove(s)

    def release_all(self) -> None:
        for s in self.open:
            s.close()
        self.open.clear()

    def close(self) -> None:
        self.release_all()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The model, one layer at a time
# --------------------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer ``i`` while the model's forward prepares the layers' arguments."""

    def __init__(self, i: int, sink: list, last: bool):
        super().__init__()
        self.i, self.sink, self.last = i, sink, last

    def forward(self, hidden_states, *args, **kwargs):
        self.sink[self.i] = (args, kwargs)
        if self.last:
            raise _Stop
        return hidden_states


def _set_param(module: torch.nn.Module, name: str, t: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    for p in path:
        module = getattr(module, p)
    module._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)


class LayerwiseModel:
    """A causal LM whose weights stay in their safetensors files: the skeleton lives on the meta device and
    :meth:`layer` loads one decoder layer at a time."""

    def __init__(self, src: Path, dtype: torch.dtype, device: torch.device):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.src, self.dtype, self.device = Path(src), dtype, torch.device(device)
        self.config = AutoConfig.from_pretrained(src)
        self.family = family_of(self.config)
        problem = self.family.sequential_problem(self.config)
        if problem:
            raise SequentialError(problem)
        self.tensors = checkpoint_tensors(self.src)
        with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary inv_freq) real
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=dtype)
        self.model.eval()
        for m in self.model.modules():  # the buffers follow the computation to the device
            for n, b in list(m._buffers.items()):
                if b is not None and b.device.type != "meta":
                    m._buffers[n] = b.to(self.device)
        self.base = self.model.base_model
        self.layers = self.base.layers
        self.prefix = self.model.base_model_prefix  # "model": checkpoint names are model.layers.N....
        self.tied = dict(getattr(self.model, "all_tied_weights_keys", None) or {})
        missing = [n for n, _ in self.model.named_parameters(remove_duplicate=False) if self._key(n) is None]
        if missing:
            raise SequentialError(f"checkpoint {self.src} lacks {len(missing)} weights the model needs "
                                  f"(e.g. {missing[0]!r}); it does not match its config.json")
        self.layer_bytes = max(
            sum(t.numel for k, t in self.tensors.items() if k.startswith(f"{self.prefix}.layers.{i}."))
            for i in range(self.config.num_hidden_layers)) * torch.empty((), dtype=dtype).element_size()

    def _key(self, name: str) -> str | None:
        if name in self.tensors:
            return name
        src = self.tied.get(name)
        return src if src in self.tensors else None

    def read(self, name: str, convert: bool = True) -> torch.Tensor:
        """One weight from disk, on the device, in the calibration dtype (``convert``) or as stored."""
        from safetensors import safe_open

        key = self._key(name)
        with safe_open(str(self.tensors[key].file), framework="pt") as h:  # opened per read: no mapping stays
            t = h.get_tensor(key)
        return t.to(device=self.device, dtype=self.dtype if convert else t.dtype)

    def _load(self, module: torch.nn.Module, prefix: str) -> None:
        for n, _ in list(module.named_parameters()):
            _set_param(module, n, self.read(f"{prefix}{n}"))

    @staticmethod
    def _release(module: torch.nn.Module) -> None:
        for n, p in list(module.named_parameters()):
            _set_param(module, n, torch.empty(p.shape, dtype=p.dtype, device="meta"))

    @contextlib.contextmanager
    def layer(self, i: int):
        """Decoder layer ``i`` with its weights loaded; released (back to meta) afterwards."""
        layer = self.layers[i]
        self._load(layer, f"{self.prefix}.layers.{i}.")
        try:
            yield layer
        finally:
            self._release(layer)

    def embed(self, batches: list[dict]):
        """Yields the input embeddings of each batch. The matrix is read once, as stored (a bf16 8B model's is
        1 GiB, 2 in fp32), and only the looked-up rows are converted: exactly what a converted matrix gives."""
        w = self.read(f"{self.prefix}.embed_tokens.weight", convert=False)
        scale = self.family.embed_scale(self.config, self.dtype)  # what the model's embedding module multiplies by
        try:
            for b in batches:
                e = torch.nn.functional.embedding(b["input_ids"].to(self.device), w).to(self.dtype)
                yield e if scale is None else e * scale.to(self.device)
        finally:
            del w

    def layer_arguments(self, embeds: torch.Tensor, mask: torch.Tensor | None) -> list[dict]:
        """What the model's forward passes to each decoder layer besides the hidden states, for one batch."""
        L = len(self.layers)
        sink: list = [None] * L
        self.base.layers = torch.nn.ModuleList([_Recorder(i, sink, i == L - 1) for i in range(L)])
        try:
            self.base(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        except _Stop:
            pass
        finally:
            self.base.layers = self.layers
        for i, (args, _) in enumerate(sink):
            if args:
                raise SequentialError(f"{type(self.layers[i]).__name__} takes positional arguments besides the hidden "
                                      f"states; sequential calibration cannot replay it")
        return [kw for _, kw in sink]

    @contextlib.contextmanager
    def head(self, logits_budget: int = 256 << 20):
        """The final norm and the LM head, loaded: yields ``loss(hidden [B, S, h], targets [B, S]) -> summed CE``.

        The head stays as stored and is converted a block of vocabulary rows at a time (as many as keep both the
        converted rows and the fp32 logits of the block under ``logits_budget`` bytes); the log-sum-exp is merged
        over the blocks, so neither the converted head (2 GiB for Llama-3.1-8B in fp32) nor a [B, S, vocab]
        logits tensor ever exists."""
        norm = self.base.norm
        self._load(norm, f"{self.prefix}.norm.")
        w = self.read("lm_head.weight", convert=False)

        def loss(h: torch.Tensor, targets: torch.Tensor) -> float:
            hn = norm(h)
            row = max(targets.numel() * 4, w.shape[1] * torch.empty((), dtype=self.dtype).element_size())
            chunk = max(256, logits_budget // row)
            lse, picked = None, torch.zeros(targets.shape, dtype=torch.float32, device=h.device)
            for c0 in range(0, w.shape[0], chunk):
                logits = self.family.logits(hn, w[c0: c0 + chunk].to(self.dtype), None, self.config).float()
                part = torch.logsumexp(logits, dim=-1)
                lse = part if lse is None else torch.logaddexp(lse, part)
                inside = (targets >= c0) & (targets < c0 + logits.shape[-1])
                picked[inside] = logits[inside, targets[inside] - c0]
            return float((lse - picked).double().sum())

        try:
            yield loss
        finally:
            self._release(norm)  # the head goes with this generator's frame


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
    from .depth import DepthError, _all_reduce_sum
    from .importance import WidthScores, as_batches, batch_tokens

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
            total = _all_reduce_sum(torch.cat([sums["block"], sums["layer"], torch.tensor([n_tok], dtype=torch.float64)]))
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
        sums = _all_reduce_sum(sums)
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
