"""Trimming: from importance scores and a target to a smaller vanilla HF checkpoint.

Two steps, kept apart so each can be read and tested alone:

1. :func:`make_plan` turns scores and a :class:`PruneTarget` into kept indices (hidden channels, query
   heads, KV heads, MLP neurons per layer, layers), each list sorted by importance, most important
   first. Keeping everything therefore only reorders channels, which leaves the function unchanged.
2. :func:`trim_checkpoint` streams the source safetensors tensor by tensor, slices each one by the
   plan and writes its bytes straight into the output file (headers are known in advance): peak
   memory is about twice the largest tensor, never two models. The compensations the plan was made with
   (:mod:`.compensation`, e.g. the head merge) change a source tensor just before it is sliced.

GQA: query heads are pruned within each KV group with the same count per group; KV heads are pruned
as whole groups, scored by the sum of their query heads' scores. ``head_dim`` is never pruned and is
written explicitly into the new config.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import shutil
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..arch import count_parameters, family_of
from ..config import ConfigError, check_value
from ..errors import MinitronError
from ..model_files import index_shards
from .compensation import COMPENSATIONS, switched_on

logger = logging.getLogger(__name__)


class PruningConfigError(MinitronError):
    """A target or pruning option that cannot be honoured; raised before any heavy work."""


@dataclass
class PruneTarget:
    """The architecture to prune to. Fields left ``None`` keep the source's value."""

    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    num_hidden_layers: int | None = None
    moe_intermediate_size: int | None = None
    """Each expert's FFN width (Qwen3-MoE; Mixtral's is ``intermediate_size``)."""
    num_local_experts: int | None = None
    """Routed experts per layer (Mixtral)."""
    num_experts: int | None = None
    """Routed experts per layer (Qwen3-MoE)."""
    mamba_num_heads: int | None = None
    """Mamba2 heads per Mamba layer (Nemotron-H): pruned within each of the ``n_groups`` groups."""
    mamba_head_dim: int | None = None
    """Channels per Mamba2 head (Nemotron-H): the same kept channels in every head of a layer."""
    drop_layers: list[int] | None = None
    """Explicit layers to drop (source indices); otherwise a depth metric picks them."""

    @classmethod
    def from_dict(cls, d: dict | None) -> "PruneTarget":
        d = dict(d or {})
        names = [f.name for f in fields(cls)]
        for k in d:
            if k not in names:
                near = difflib.get_close_matches(k, names, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise PruningConfigError(f"target field {k!r} is unknown{hint} Allowed: {', '.join(names)}")
        out = {}
        for k, v in d.items():
            if v is None:
                continue
            # the config layer's own integer check: 64, 64.0 and "64" (KEY=VALUE on the command line) are 64;
            # 64.7, true and "abc" are refused, never truncated or read as 1
            if k == "drop_layers":
                given = v
                if isinstance(v, str):
                    v = [x for x in re.split(r"[,\s]+", v.strip("[] ")) if x]
                try:
                    if not isinstance(v, (list, tuple)):
                        raise ConfigError("")
                    out[k] = sorted({check_value(k, x, int) for x in v})
                except ConfigError:
                    raise PruningConfigError(f"target drop_layers={given!r} must be a list of layer indices "
                                             f"(integers)") from None
            else:
                try:
                    out[k] = check_value(k, v, int)
                except ConfigError:
                    raise PruningConfigError(f"target {k}={v!r} must be an integer (a whole number; not true/false, "
                                             f"not a fraction)") from None
        return cls(**out)

    def to_dict(self) -> dict:
        """The fields that are set: what ``pruning.json`` records, and what :meth:`from_dict` reads back as an equal
        target."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def width_fields(self) -> dict:
        """The set fields that need importance scores (:data:`WIDTH_FIELDS`)."""
        return {k: v for k, v in self.to_dict().items() if k in WIDTH_FIELDS}


# target fields that need importance scores (everything but depth)
WIDTH_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "moe_intermediate_size", "num_local_experts", "num_experts", "mamba_num_heads", "mamba_head_dim")


def _nearest_multiples(value: int, k: int, upper: int) -> list[int]:
    lo = (value // k) * k
    return [x for x in (lo, lo + k) if 0 < x <= upper]


def resolve_target(config, target: PruneTarget) -> tuple[dict, list[int] | None]:
    """Validate ``target`` against ``config``; return (new config dict, explicit layers to drop).

    Every check names the field, the value and what is allowed. The new config is built with
    transformers' own config class, so anything transformers would reject fails here, before work.
    """
    family = family_of(config)
    for k, v in asdict(target).items():
        if v is not None and k != "drop_layers" and k not in family.prunable:
            raise PruningConfigError(f"target {k}={v}: {family.model_type} models cannot be pruned along {k}; "
                                     f"prunable: {', '.join(family.prunable)}")
    src = {k: getattr(config, k) for k in family.prunable}
    new = dict(src)
    for k, v in asdict(target).items():
        if k == "drop_layers" or v is None:
            continue
        if not 1 <= v <= src[k]:
            if k == "num_hidden_layers" and v < 1:
                raise PruningConfigError("target num_hidden_layers=0 would drop every layer; keep at least 1")
            raise PruningConfigError(
                f"target {k}={v} is not allowed: it must be between 1 and the source's {k}={src[k]} "
                f"(pruning only removes)"
            )
        new[k] = v

    drop = target.drop_layers
    L = src["num_hidden_layers"]
    if drop is not None:
        bad = [i for i in drop if not 0 <= i < L]
        if bad:
            raise PruningConfigError(f"target drop_layers={drop}: indices {bad} are outside 0..{L - 1}")
        if len(drop) >= L:
            raise PruningConfigError(f"target drop_layers={drop} would drop every layer; keep at least 1")
        if target.num_hidden_layers is not None and target.num_hidden_layers != L - len(drop):
            raise PruningConfigError(
                f"target num_hidden_layers={target.num_hidden_layers} contradicts drop_layers ({len(drop)} of {L} "
                f"layers dropped leaves {L - len(drop)}); give one of them"
            )
        new["num_hidden_layers"] = L - len(drop)

    H, G = new["num_attention_heads"], new["num_key_value_heads"]
    if H % G:
        raise PruningConfigError(
            f"target num_attention_heads={H} is not divisible by num_key_value_heads={G}; GQA needs an equal "
            f"number of query heads per KV head (e.g. num_attention_heads in {[G * r for r in range(1, 5)]})"
        )
    r_src = src["num_attention_heads"] // src["num_key_value_heads"]
    if H // G > r_src:
        raise PruningConfigError(
            f"target num_attention_heads={H} with num_key_value_heads={G} needs {H // G} query heads per KV group, "
            f"but the source has only {r_src}; query heads are pruned within their group: use "
            f"num_attention_heads <= {G * r_src} or more KV heads"
        )
    if family.hidden_divisible_by_heads and new["hidden_size"] % H:
        near = _nearest_multiples(new["hidden_size"], H, src["hidden_size"])
        raise PruningConfigError(
            f"target hidden_size={new['hidden_size']} with num_attention_heads={H}: {type(config).__name__} in "
            f"transformers 5.x requires hidden_size % num_attention_heads == 0 (even with an explicit head_dim). "
            f"Nearest valid hidden_size: {' or '.join(map(str, near)) or 'none'}; or prune heads as well"
        )

    problem = family.target_problem(config, new)
    if problem:
        raise PruningConfigError(problem)
    d = family.pruned_config(config, new)  # per-layer fields are filled by make_plan once the kept layers are known
    try:
        type(config).from_dict({**d, **{f: None for f in family.per_layer_fields if d.get(f) is None}})
    except Exception as e:
        raise PruningConfigError(f"transformers rejects the target config: {e}") from e
    return d, drop


def kept_layers_config(config, new_config: dict, layers: list[int]) -> dict:
    """The pruned config (``new_config``, from :func:`resolve_target`) with the family's per-layer fields (layer
    types, Nemotron-H's block pattern, SmolLM3's NoPE layers) taken for the kept source ``layers``: the config the
    pruned checkpoint gets, which a hybrid's parameter count depends on."""
    new_config = dict(new_config)
    for f in family_of(config, check=False).per_layer_fields:
        src_list = getattr(config, f, None)
        if src_list is not None:
            new_config[f] = [src_list[i] for i in layers]
    return new_config


@dataclass
class PrunePlan:
    """Kept indices into the source model, most important first (layers in source order)."""

    layers: list[int]
    hidden: torch.Tensor
    heads: dict[int, torch.Tensor]  # source layer -> kept query heads, grouped by kept KV head
    kv_heads: dict[int, torch.Tensor]  # source layer -> kept KV heads
    # source layer -> kept MLP neurons; a mixture of experts: [kept experts, neurons], row i the kept neurons of
    # expert experts[layer][i]
    neurons: dict[int, torch.Tensor]
    new_config: dict
    head_dim: int
    # compensation name -> what it decided per source layer (Compensation.decide); the ones make_plan switched on
    compensations: dict[str, dict[int, object]] = field(default_factory=dict)
    src_sizes: dict[str, int] = field(default_factory=dict)  # the source's axis sizes (fused tensors' offsets)
    experts: dict[int, torch.Tensor] = field(default_factory=dict)  # source layer -> kept experts (MoE only)
    # source layer -> the family's own axes of that layer (Family.layer_axes; Nemotron-H's Mamba heads/channels)
    axes: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def expert_position(self, layer: int, expert: int) -> int | None:
        """The new index of source expert ``expert`` of source layer ``layer``; None if it is dropped."""
        hit = (self.experts[layer] == expert).nonzero()
        return int(hit[0, 0]) if len(hit) else None

    def then(self, nxt: "PrunePlan") -> "PrunePlan":
        """The plan that maps the source straight to the result of ``self`` followed by ``nxt``
        (iterative pruning records kept indices into the original model this way)."""
        pairs = [(self.layers[j], j) for j in nxt.layers]  # (source layer, intermediate layer)

        def neurons(src: int, j: int) -> torch.Tensor:
            if not self.experts:
                return self.neurons[src][nxt.neurons[j]]
            return torch.gather(self.neurons[src][nxt.experts[j]], 1, nxt.neurons[j])

        return PrunePlan(
            layers=[src for src, _ in pairs],
            hidden=self.hidden[nxt.hidden],
            heads={src: self.heads[src][nxt.heads[j]] for src, j in pairs},
            kv_heads={src: self.kv_heads[src][nxt.kv_heads[j]] for src, j in pairs},
            neurons={src: neurons(src, j) for src, j in pairs},
            new_config=nxt.new_config, head_dim=self.head_dim, compensations=nxt.compensations,
            src_sizes=self.src_sizes,
            experts={src: self.experts[src][nxt.experts[j]] for src, j in pairs} if self.experts else {},
            axes={src: {a: self.axes[src][a][v] for a, v in nxt.axes.get(j, {}).items()} for src, j in pairs
                  if self.axes.get(src)},
        )

    def to_json(self) -> dict:
        moe = {"experts": {str(l): v.tolist() for l, v in self.experts.items()}} if self.experts else {}
        if any(self.axes.values()):
            moe["axes"] = {str(l): {a: v.tolist() for a, v in axes.items()} for l, axes in self.axes.items() if axes}
        return {
            "layers": self.layers,
            "hidden": self.hidden.tolist(),
            "heads": {str(l): v.tolist() for l, v in self.heads.items()},
            "kv_heads": {str(l): v.tolist() for l, v in self.kv_heads.items()},
            "neurons": {str(l): v.tolist() for l, v in self.neurons.items()},
            **{c.record: {str(l): v for l, v in self.compensations.get(name, {}).items()} or None
               for name, c in COMPENSATIONS.items() if c.record},
            **moe,
        }


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    # stable so ties (e.g. keep-everything on equal scores) keep source order
    return torch.sort(scores.float(), descending=True, stable=True).indices[:k]


def make_plan(config, importance, new_config: dict, drop_layers: list[int] | None, **compensations: bool) -> PrunePlan:
    """Kept indices for every prunable axis. ``importance`` may be None for depth-only pruning. ``compensations``
    switch on registered compensations by name (``merge_pruned_heads=True``; :mod:`.compensation`)."""
    switched = switched_on(compensations)
    family = family_of(config)
    num_layers = config.num_hidden_layers
    num_heads, kv_groups = config.num_attention_heads, config.num_key_value_heads  # a KV group per KV head
    per_group = num_heads // kv_groups  # query heads per KV group
    new_groups = new_config["num_key_value_heads"]
    new_per_group = new_config["num_attention_heads"] // new_groups
    drop = set(drop_layers or [])
    if len(drop) != num_layers - new_config["num_hidden_layers"]:
        raise PruningConfigError(
            f"num_hidden_layers={new_config['num_hidden_layers']} needs {num_layers - new_config['num_hidden_layers']} "
            f"layers chosen to drop, got {sorted(drop)}"
        )
    layers = [i for i in range(num_layers) if i not in drop]
    problem = family.kept_layers_problem(config, layers)
    if problem:
        raise PruningConfigError(problem)
    mlp_width, new_mlp_width = getattr(config, family.mlp_field), new_config[family.mlp_field]  # per expert in a MoE
    num_experts, new_experts = family.num_experts(config), family.num_experts(new_config)  # 0: dense
    width_changes = any(new_config[k] != getattr(config, k) for k in
                        ("hidden_size", "num_attention_heads", "num_key_value_heads", *family.extra_width_fields)) \
        or (mlp_width, num_experts) != (new_mlp_width, new_experts)
    experts = {}
    if importance is None:
        if width_changes:
            raise PruningConfigError("width pruning (hidden/MLP/heads) needs importance scores")
        ident = lambda n: torch.arange(n)  # noqa: E731
        hidden = ident(config.hidden_size)
        heads = {l: ident(num_heads) for l in layers}
        kv_heads = {l: ident(kv_groups) for l in layers}
        neurons = {l: ident(mlp_width) for l in layers}
        if family.is_moe:
            experts = {l: ident(num_experts) for l in layers}
            neurons = {l: ident(mlp_width).expand(num_experts, mlp_width).clone() for l in layers}
    else:
        importance.check_matches(config)
        hidden = _top(importance.hidden, new_config["hidden_size"])
        if family.is_moe:  # each layer keeps its own experts, each kept expert its own neurons
            experts = {l: _top(importance.experts[l], new_experts) for l in layers}
            neurons = {l: torch.stack([_top(importance.neurons[l][e], new_mlp_width) for e in experts[l].tolist()])
                       for l in layers}
        else:
            neurons = {l: _top(importance.neurons[l], new_mlp_width) for l in layers}
        heads, kv_heads = {}, {}
        for l in layers:
            group_scores = importance.heads[l].float().view(kv_groups, per_group)
            groups = _top(group_scores.sum(1), new_groups)
            kept_q = []
            for g in groups.tolist():
                order = _top(group_scores[g], per_group)  # within-group ranking, most important first
                kept_q.extend((g * per_group + order[:new_per_group]).tolist())
            heads[l] = torch.tensor(kept_q)
            kv_heads[l] = groups
    types = family.layer_types(config)
    extra = family.extra_scores(config)
    axes = {l: family.layer_axes(config, new_config, None if importance is None else
                                 {k: importance.score(k)[l] for k in extra}, types[l]) for l in layers}
    new_config = kept_layers_config(config, new_config, layers)
    plan = PrunePlan(layers, hidden, heads, kv_heads, neurons, new_config, family.head_dim(config), {},
                     family.axis_sizes(config), experts, {l: a for l, a in axes.items() if a})
    for c in switched:
        plan.compensations[c.name] = c.decide(config, importance, plan)
    return plan


# --------------------------------------------------------------------------------------------------
# Streaming checkpoint surgery
# --------------------------------------------------------------------------------------------------

# decoder-layer tensors on disk: ``model.layers.N.<suffix>`` (``backbone.layers.N.<suffix>`` for Nemotron-H, which
# transformers 5.19 saves under its Hub prefix): the prefix is kept as it is
_LAYER = re.compile(r"^([A-Za-z_]+)\.layers\.(\d+)\.(.+)$")
# the slicing rules of each family (which axis a tensor's rows and columns belong to) live in its module under
# minitron_hf/arch/: Family.layer_rules and Family.global_rules


def _head_channels(heads: torch.Tensor, hd: int) -> torch.Tensor:
    return (heads[:, None] * hd + torch.arange(hd)).reshape(-1)


def _surgery(name: str, plan: PrunePlan):
    """(output name, per-dim slicing rule, index per axis, layer) for one source tensor name."""
    family = family_of(plan.new_config, check=False)
    m = _LAYER.match(name)
    if m:
        prefix, layer, suffix = m.group(1), int(m.group(2)), m.group(3)
        expert = family.expert_of(suffix)
        rule = family.layer_rules.get(expert[1] if expert else suffix)
        if rule is None:
            raise PruningConfigError(f"checkpoint tensor {name!r} is not one the pruner knows how to slice")
        idx = {
            "hidden": plan.hidden,
            "q": _head_channels(plan.heads[layer], plan.head_dim),
            "kv": _head_channels(plan.kv_heads[layer], plan.head_dim),
        }
        if family.is_moe:
            idx["experts"] = plan.experts[layer]
            if expert:  # one expert's FFN: its own kept neurons, and its new number
                pos = plan.expert_position(layer, expert[0])
                if pos is None:
                    raise PruningConfigError(f"checkpoint tensor {name!r} belongs to a dropped expert")
                idx["mlp"] = plan.neurons[layer][pos]
                suffix = expert[1].replace("*", str(pos))
        else:
            idx["mlp"] = plan.neurons[layer]
        idx.update(plan.axes.get(layer, {}))
        for axis in family.fused_axes:
            if any(part not in idx for part in family.fused_axes[axis]):
                continue  # a layer type without this axis (Nemotron-H: no Mamba axes in attention layers)
            idx[axis] = family.fused_index(axis, idx, plan.src_sizes)
        return f"{prefix}.layers.{plan.layers.index(layer)}.{suffix}", rule, idx, layer
    rule = family.global_rules.get(name)
    if rule is None:
        raise PruningConfigError(f"checkpoint tensor {name!r} is not one the pruner knows how to slice")
    return name, rule, {"hidden": plan.hidden}, None


def output_shape(name: str, shape, plan: PrunePlan) -> tuple[str, tuple[int, ...]]:
    new_name, rule, idx, _ = _surgery(name, plan)
    return new_name, tuple(len(idx[a]) if a is not None else n for a, n in zip(rule, shape))


def slice_tensor(name: str, t: torch.Tensor, plan: PrunePlan) -> tuple[str, torch.Tensor]:
    """The output name and tensor for one source tensor (raises on names we do not know)."""
    new_name, rule, idx, layer = _surgery(name, plan)
    inner = name.split(".", 3)[-1] if layer is not None else name  # the name the family's rules use
    for key in plan.compensations:  # the compensations the plan was made with, in registry order
        t = COMPENSATIONS[key].apply(plan, layer, inner, t)
    for dim, axis in enumerate(rule):
        if axis is not None:
            t = t.index_select(dim, idx[axis])
    t = family_of(plan.new_config, check=False).adjust(new_name, t, plan)
    return new_name, t.contiguous()


def checkpoint_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        return [src / n for n in index_shards(index)]
    single = src / "model.safetensors"
    if single.exists():
        return [single]
    raise PruningConfigError(
        f"model={str(src)!r} has no safetensors weights (model.safetensors or an index); convert it with "
        f"save_pretrained(..., safe_serialization=True)"
    )


def _layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(2)) if m else None


def _dropped_expert(name: str, plan: PrunePlan) -> bool:
    """Whether ``name`` is a tensor of an expert the plan drops (its layer is kept)."""
    m = _LAYER.match(name)
    expert = family_of(plan.new_config, check=False).expert_of(m.group(3)) if m else None
    return expert is not None and plan.expert_position(int(m.group(2)), expert[0]) is None


def trim_checkpoint(src: Path, out: Path, plan: PrunePlan, max_shard_bytes: int = 2 << 30,
                    progress: bool = True) -> dict:
    """Write the sliced weights of ``src`` into ``out`` (an existing, empty directory).

    Output shapes follow from the source shapes and the plan, so every safetensors header is written
    first and each tensor's bytes go to disk the moment it is sliced: one source tensor is read at a
    time (``safe_open``) and nothing accumulates. Peak memory is about twice the largest tensor,
    whatever the model size. Returns the output's ``{name: shape}``.
    """
    kept = set(plan.layers)
    entries = []  # (source file, source name, output name, shape, safetensors dtype)
    for f in checkpoint_files(src):
        with safe_open(str(f), framework="pt") as h:
            for key in h.keys():
                layer = _layer_of(key)
                if layer is not None and (layer not in kept or _dropped_expert(key, plan)):
                    continue
                sl = h.get_slice(key)
                new_name, shape = output_shape(key, sl.get_shape(), plan)
                entries.append((f, key, new_name, shape, sl.get_dtype()))
    shards: list[list] = [[]]
    size = 0
    for e in entries:
        n = _nbytes(e[3], e[4])
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += n
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    bar = tqdm(total=len(entries), desc="trim", disable=not progress)
    for fname, shard in zip(names, shards):
        _write_safetensors(out / fname, shard, plan, bar)
    bar.close()
    if len(shards) > 1:
        weight_map = {e[2]: fname for fname, shard in zip(names, shards) for e in shard}
        total = sum(_nbytes(e[3], e[4]) for e in entries)
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        )
    return {e[2]: e[3] for e in entries}


_ST_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                   "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _nbytes(shape, st_dtype: str) -> int:
    if st_dtype not in _ST_DTYPE_BYTES:
        raise PruningConfigError(f"checkpoint dtype {st_dtype} is not supported by the pruner")
    return math.prod(shape) * _ST_DTYPE_BYTES[st_dtype]


def _write_safetensors(path: Path, entries, plan: PrunePlan, bar) -> None:
    """The safetensors format by hand: an 8-byte little-endian header length, a JSON header (padded
    to 8 bytes) with each tensor's dtype, shape and byte range, then the raw bytes in that order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for _, _, new_name, shape, dtype in entries:
        n = _nbytes(shape, dtype)
        header[new_name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for src_file, key, new_name, shape, _ in entries:
            with safe_open(str(src_file), framework="pt") as h:
                t = h.get_tensor(key)
            _, t = slice_tensor(key, t, plan)
            assert tuple(t.shape) == tuple(shape), (key, t.shape, shape)
            fh.write(t.reshape(-1).view(torch.uint8).numpy().data)  # little-endian, as safetensors requires
            del t
            bar.update(1)


# Files a checkpoint directory carries besides weights and config; copied as they are.
_AUX_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                 "*.model", "*.tiktoken", "chat_template.*", "generation_config.json", "LICENSE*")


def copy_aux_files(src: Path, out: Path) -> None:
    for pat in _AUX_PATTERNS:
        for p in src.glob(pat):
            if p.is_file():
                shutil.copy2(p, out / p.name)


def has_tokenizer(src: Path) -> bool:
    return any((src / n).exists() for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"))


def parameter_counts(config, new_config: dict) -> dict:
    after = type(config).from_dict(new_config)
    return {"before": count_parameters(config), "after": count_parameters(after)}
