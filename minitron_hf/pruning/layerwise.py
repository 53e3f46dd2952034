"""A causal LM whose weights stay in their safetensors files, loaded one decoder layer at a time.

The skeleton is built on the meta device: no weight is allocated. The checkpoint is read from its headers first
(:func:`checkpoint_tensors`), then tensor by tensor as each layer is loaded onto the device and released again.
:mod:`.sequential` runs calibration over it; this module only knows the checkpoint and the model.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from ..arch import family_of
from ..errors import MinitronError
from ..model_files import read_weight_map


class SequentialError(MinitronError):
    """A checkpoint, option or machine that sequential calibration cannot work with; raised before calibration.
    (Here, the lowest of the sequential modules, so that the activation cache and the options can raise it too.)"""


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
