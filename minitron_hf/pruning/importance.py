"""Activation-based importance of heads, MLP neurons and hidden channels (arXiv 2407.14679 sec. 2.2).

One pass of forward hooks over a calibration set. Every score is a per-channel fp32 accumulator:
activations are reduced the moment a hook sees them and never stored.

- attention head ``i`` of layer ``l``: the input of ``o_proj`` viewed as [heads, head_dim]; a token's
  head activation is the L2 norm over its ``head_dim`` channels;
- MLP neuron ``j``: the input of ``down_proj`` (i.e. ``act(gate) * up``), magnitude per token;
- hidden channel ``c``: the outputs of every ``input_layernorm`` and ``post_attention_layernorm``,
  magnitude per token, summed over layers and the two norms;
- mixture of experts (:attr:`~minitron_hf.arch.base.Family.is_moe`): expert ``e`` of layer ``l`` scores, as in
  NVIDIA ModelOpt, the sum over the (unpadded) tokens routed to it of routing weight x L2 norm of its output; neuron
  ``j`` of expert ``e`` is the magnitude at the input of that expert's down projection, aggregated as above over the
  tokens routed to ``e`` only (a sample counts for ``e`` if it routed at least one token there). transformers holds
  a layer's experts stacked and dispatches their forward to several kernels, so during calibration the experts
  module's forward is replaced by one that computes each expert's FFN on its tokens
  (:meth:`~minitron_hf.arch.moe.MoEDecoder.expert_forward`), scores it and sums the routed outputs: each expert's FFN
  runs once per batch.

Where each probe sits is the family's to say (:meth:`~minitron_hf.arch.base.Family.layer_probes`, by layer type):
a hybrid model (Nemotron-H) probes each layer for what it holds -- a Mamba2 layer the x rows of ``in_proj``'s
output (the family's extra score ``mamba``), an attention layer its heads, an MLP layer its neurons, every layer its
block norm -- and a score a layer has no probe for stays zero.

A token activation is reduced over the sequence (``seq_agg``) and then over the batch (``batch_agg``);
the paper's default (and ours) is mean over sequence, L2 over batch: ``aggregation="l2_mean"``. The
other reducers of the paper's ablation (``mean``, ``l1``, ``l2``, ``max``, for either axis) are
selectable as ``"<batch>_<seq>"``. Padding tokens (``attention_mask == 0``) count nowhere.

The LM head is never computed: calibration runs the base model (``model.base_model``), which pays
for the hooks. Under ``torch.distributed`` (``accelerate launch``) the accumulators are all-reduced.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..arch import family_of
from ..errors import MinitronError
from ..outputs import read_json, safetensors_problem

logger = logging.getLogger(__name__)

REDUCERS = ("mean", "l2", "l1", "max")
AGGREGATIONS = tuple(f"{b}_{s}" for b in REDUCERS for s in REDUCERS)


class ImportanceError(MinitronError):
    """Bad importance settings or a score file that does not match the model."""


def parse_aggregation(aggregation: str) -> tuple[str, str]:
    """``"l2_mean"`` -> (batch reducer, sequence reducer), with a clear error for anything else."""
    parts = aggregation.split("_")
    if len(parts) != 2 or parts[0] not in REDUCERS or parts[1] not in REDUCERS:
        raise ImportanceError(
            f"importance={aggregation!r} is not valid; use '<batch>_<seq>' with each of {', '.join(REDUCERS)} "
            f"(paper default 'l2_mean': mean over sequence, L2 over batch), or 'random'"
        )
    return parts[0], parts[1]


class ChannelReducer:
    """Streams [batch, seq, channels] magnitudes into one fp32 score per channel."""

    def __init__(self, shape: tuple[int, ...], batch_agg: str, seq_agg: str, device):
        self.batch_agg, self.seq_agg = batch_agg, seq_agg
        self.acc = torch.zeros(shape, dtype=torch.float32, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def update_rows(self, x: torch.Tensor, sample: torch.Tensor, n_samples: int) -> None:
        """Token rows of a subset of a batch's tokens: ``x`` [n, *channels], non-negative; ``sample`` [n], the sample
        each row belongs to. The sequence reducer runs over each sample's rows; samples with none do not count."""
        x = x.float()
        sample = sample.to(x.device)
        shape = (n_samples, *x.shape[1:])
        n = torch.zeros(n_samples, dtype=x.dtype, device=x.device).index_add_(0, sample, torch.ones_like(sample,
                                                                                                       dtype=x.dtype))
        if self.seq_agg == "max":
            at = sample.view(-1, *([1] * (x.dim() - 1))).expand_as(x)
            s = torch.zeros(shape, dtype=x.dtype, device=x.device).scatter_reduce_(0, at, x, "amax")
        else:
            s = torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(0, sample, x * x if self.seq_agg == "l2"
                                                                              else x)
            if self.seq_agg == "mean":
                s = s / n.clamp(min=1).view(-1, *([1] * (x.dim() - 1)))
            elif self.seq_agg == "l2":
                s = s.sqrt()
        self._reduce_batch(s, n > 0)

    def update(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """``x``: [B, S, *channels], non-negative; ``mask``: [B, S] (1 = real token) or None."""
        x = x.float()
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        m = mask.to(device=x.device, dtype=torch.bool).view(*mask.shape, *([1] * (x.dim() - 2)))
        n_tok = m.sum(1).clamp(min=1)  # [B, 1...]
        if self.seq_agg == "mean":
            s = torch.where(m, x, 0).sum(1) / n_tok
        elif self.seq_agg == "l1":
            s = torch.where(m, x, 0).sum(1)
        elif self.seq_agg == "l2":
            s = torch.where(m, x * x, 0).sum(1).sqrt()
        else:  # max (values are magnitudes, so 0 is a neutral fill)
            s = torch.where(m, x, 0).amax(1)
        self._reduce_batch(s, mask.any(1))  # samples that are all padding do not count

    def _reduce_batch(self, s: torch.Tensor, valid: torch.Tensor) -> None:
        s = s[valid]
        if self.batch_agg == "l2":
            self.acc += (s * s).sum(0)
        elif self.batch_agg in ("mean", "l1"):
            self.acc += s.sum(0)
        else:
            if s.shape[0]:
                torch.maximum(self.acc, s.amax(0), out=self.acc)
        self.count += valid.sum()

    def all_reduce(self) -> None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        op = torch.distributed.ReduceOp.MAX if self.batch_agg == "max" else torch.distributed.ReduceOp.SUM
        torch.distributed.all_reduce(self.acc, op=op)
        torch.distributed.all_reduce(self.count, op=torch.distributed.ReduceOp.SUM)

    def result(self) -> torch.Tensor:
        if self.batch_agg == "l2":
            return self.acc.sqrt()
        if self.batch_agg == "mean":
            return self.acc / max(float(self.count), 1.0)
        return self.acc.clone()


@dataclass
class Importance:
    """Scores of one calibration pass. Save once, prune to several targets."""

    heads: torch.Tensor  # [layers, num_attention_heads]
    neurons: torch.Tensor  # [layers, intermediate_size]; a mixture of experts: [layers, experts, expert width]
    # [layers, hidden probes, hidden_size]: the outputs of each layer's norms (Family.hidden_probes; Llama-style:
    # input norm, post-attention norm)
    hidden_per_layer: torch.Tensor
    meta: dict = field(default_factory=dict)
    experts: torch.Tensor | None = None  # [layers, experts] (mixtures of experts only)
    # the family's own scores (Family.extra_scores), name -> [layers, *shape]; e.g. Nemotron-H's "mamba"
    extra: dict = field(default_factory=dict)

    def score(self, name: str) -> torch.Tensor | None:
        """A score tensor by name: heads, neurons, hidden_per_layer, experts or one of :attr:`extra`."""
        return self.extra.get(name) if name in self.extra else getattr(self, name, None)

    @property
    def hidden(self) -> torch.Tensor:
        """Hidden-channel score: summed over layers and the norms of each layer."""
        return self.hidden_per_layer.sum(dim=(0, 1))

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        moe = {} if self.experts is None else {"experts": self.experts.contiguous()}
        save_file(
            {"heads": self.heads.contiguous(), "neurons": self.neurons.contiguous(),
             "hidden_per_layer": self.hidden_per_layer.contiguous(), **moe,
             **{k: v.contiguous() for k, v in self.extra.items()}},
            str(out / "importance.safetensors"),
        )
        (out / "importance.json").write_text(json.dumps(self.meta, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Importance":
        path = Path(path)
        d = path if path.is_dir() else path.parent
        if not (d / "importance.safetensors").exists():
            raise ImportanceError(f"scores={str(path)!r}: no importance.safetensors there (run `minitron importance`)")
        f = d / "importance.safetensors"
        problem = safetensors_problem(f)
        if problem:
            raise ImportanceError(f"scores={str(path)!r}: {problem}; recompute it with `minitron importance`")
        t = load_file(str(f))
        missing = [k for k in ("heads", "neurons", "hidden_per_layer") if k not in t]
        if missing:
            raise ImportanceError(f"scores={str(path)!r}: {f.name} lacks {', '.join(missing)}; it was not written by "
                                  f"`minitron importance`")
        meta = read_json(d / "importance.json", "scores") if (d / "importance.json").exists() else {}
        extra = {k: v for k, v in t.items() if k not in ("heads", "neurons", "hidden_per_layer", "experts")}
        return cls(t["heads"], t["neurons"], t["hidden_per_layer"], meta, t.get("experts"), extra)

    def check_matches(self, config) -> None:
        """Raise unless the scores were computed on a model of this shape."""
        want = score_shapes(config)
        for name, shape in want.items():
            if self.score(name) is None:
                raise ImportanceError(f"scores do not match the model: they lack {name} scores {shape}, which a "
                                      f"{config.model_type} model needs; recompute importance for this model")
            if tuple(self.score(name).shape) != shape:
                raise ImportanceError(
                    f"scores do not match the model: {name} has shape {tuple(self.score(name).shape)}, "
                    f"the model needs {shape}; recompute importance for this model"
                )


def score_shapes(config) -> dict[str, tuple[int, ...]]:
    """The shape of every score tensor a model of this config needs."""
    family = family_of(config)
    L, E, mlp = config.num_hidden_layers, family.num_experts(config), getattr(config, family.mlp_field)
    want = {
        "heads": (L, config.num_attention_heads),
        "neurons": (L, E, mlp) if family.is_moe else (L, mlp),
        "hidden_per_layer": (L, len(family.hidden_probes), config.hidden_size),
    }
    if family.is_moe:
        want["experts"] = (L, E)
    want.update({k: (L, *shape) for k, shape in family.extra_scores(config).items()})
    return want


def random_importance(config, seed: int = 0) -> Importance:
    """Uniform random scores of the right shapes (the paper's random-pruning ablation)."""
    g = torch.Generator().manual_seed(seed)
    shapes = score_shapes(config)
    rand = {k: torch.rand(*shapes[k], generator=g) for k in ("heads", "neurons", "hidden_per_layer")}
    experts = torch.rand(*shapes["experts"], generator=g) if "experts" in shapes else None
    extra = {k: torch.rand(*shapes[k], generator=g) for k in family_of(config).extra_scores(config)}
    return Importance(**rand, meta={"aggregation": "random", "seed": seed}, experts=experts, extra=extra)


def _decoder_layers(model):
    base = model.base_model
    if not hasattr(base, "layers"):
        raise ImportanceError(f"{type(model).__name__} has no base_model.layers; not a supported decoder")
    return base.layers


class WidthScores:
    """The fp32 accumulators of every width axis, one set per decoder layer, filled by forward hooks.

    One home for the probe points, shared by the in-memory pass (:func:`estimate_importance`: hooks on every
    layer at once) and the sequential pass (:mod:`.sequential`: hooks on the one layer that is loaded)."""

    def __init__(self, config, aggregation: str, device):
        self.family = family_of(config)
        self.aggregation = aggregation
        batch_agg, seq_agg = parse_aggregation(aggregation)
        L, self.H, self.hd = config.num_hidden_layers, config.num_attention_heads, self.family.head_dim(config)
        self.heads = [ChannelReducer((self.H,), batch_agg, seq_agg, device) for _ in range(L)]
        mlp, E = getattr(config, self.family.mlp_field), self.family.num_experts(config)
        if self.family.is_moe:  # [layer][expert]: each expert's neurons over the tokens routed to it
            self.neurons = [[ChannelReducer((mlp,), batch_agg, seq_agg, device) for _ in range(E)] for _ in range(L)]
            self.experts = [torch.zeros(E, dtype=torch.float64, device=device) for _ in range(L)]
        else:
            self.neurons = [ChannelReducer((mlp,), batch_agg, seq_agg, device) for _ in range(L)]
        self.hidden = [[ChannelReducer((config.hidden_size,), batch_agg, seq_agg, device)
                        for _ in self.family.hidden_probes] for _ in range(L)]
        # the family's own scores: name -> one reducer per layer (a layer whose type has no such probe keeps zeros)
        self.extra = {k: [ChannelReducer(shape, batch_agg, seq_agg, device) for _ in range(L)]
                      for k, shape in self.family.extra_scores(config).items()}
        self.config = config
        self.layer_types = self.family.layer_types(config)
        self.mask: torch.Tensor | None = None  # attention mask of the batch being run (1 = real token)
        self.tokens = 0

    def set_batch(self, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
        self.mask = mask
        self.batch_shape = tuple(ids.shape)
        self.tokens += batch_tokens(ids, mask)

    def attach(self, layer, i: int) -> list:
        """Hooks on decoder layer ``i``'s probe points (the family's :meth:`~minitron_hf.arch.base.Family.layer_probes`
        for the layer's type); returns the handles to remove."""

        def reducer(probe):
            if probe.score == "hidden":
                return self.hidden[i][probe.slot]
            if probe.score in self.extra:
                return self.extra[probe.score][i]
            return {"heads": self.heads, "neurons": self.neurons}[probe.score][i]

        def input_hook(r, transform):
            def hook(module, args):
                r.update(transform(args[0]), self.mask)
            return hook

        def output_hook(r, transform):
            def hook(module, args, out):
                r.update(transform(out), self.mask)
            return hook

        def experts_forward(module):
            """The experts module's forward, computed here expert by expert (the family's :meth:`expert_forward`)
            so that each expert's FFN runs once per batch and is scored as it runs: the routed, weighted sum of the
            experts' outputs, as the module computes it; scores count the real (unpadded) tokens only."""
            E = len(self.experts[i])

            def forward(hidden_states, top_k_index, top_k_weights):  # [tokens, hidden], [tokens, k], [tokens, k]
                x, index, weights = hidden_states, top_k_index, top_k_weights
                B, S = self.batch_shape
                real = torch.ones(B * S, dtype=torch.bool, device=x.device) if self.mask is None else \
                    self.mask.reshape(-1).to(device=x.device, dtype=torch.bool)
                # the (token, slot) pairs, grouped by expert with one stable sort (not one scan per expert: 128
                # experts would scan the routing table 128 times); within an expert, in token order. An index of E
                # or more is no expert (transformers' expert-parallel masking): skipped, as the module does
                k = index.shape[1]
                flat = index.reshape(-1)
                pairs = (flat < E).nonzero(as_tuple=True)[0]  # pair p: token p // k, slot p % k
                pairs = pairs[torch.argsort(flat[pairs], stable=True)]
                counts = torch.bincount(flat[pairs], minlength=E).tolist()
                out = torch.zeros_like(x)
                for e, group in enumerate(pairs.split(counts)):
                    if not len(group):
                        continue
                    token, slot = group // k, group % k
                    act, y = self.family.expert_forward(module, x[token], e)
                    w = weights[token, slot]
                    r = real[token]
                    self.neurons[i][e].update_rows(act[r].abs(), token[r] // S, B)
                    self.experts[i][e] += (w[r].double() * y[r].double().norm(dim=-1)).sum()
                    out.index_add_(0, token, (y * w[:, None]).to(out.dtype))
                return out
            return forward

        handles = []
        for probe in self.family.layer_probes(self.config, self.layer_types[i]):
            module = layer.get_submodule(probe.path)
            if probe.routed:  # a mixture of experts' experts module: routing-aware, per expert
                handles.append(_ForwardOverride(module, experts_forward))
            elif probe.output:
                handles.append(module.register_forward_hook(output_hook(reducer(probe), probe.transform)))
            else:
                handles.append(module.register_forward_pre_hook(input_hook(reducer(probe), probe.transform)))
        return handles

    def result(self) -> Importance:
        """All-reduced over data-parallel processes (every process must call it), checked finite."""
        moe = self.family.is_moe
        neurons = [r for rs in self.neurons for r in rs] if moe else self.neurons
        for r in [*self.heads, *neurons, *(x for pair in self.hidden for x in pair),
                  *(x for rs in self.extra.values() for x in rs)]:
            r.all_reduce()
        experts = None
        if moe:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                for t in self.experts:
                    torch.distributed.all_reduce(t)
            experts = torch.stack(self.experts).float().cpu()
        result = Importance(
            heads=torch.stack([r.result() for r in self.heads]).cpu(),
            neurons=torch.stack([torch.stack([r.result() for r in rs]) if moe else rs.result()
                                 for rs in self.neurons]).cpu(),
            hidden_per_layer=torch.stack([torch.stack([r.result() for r in rs]) for rs in self.hidden]).cpu(),
            meta={"aggregation": self.aggregation, "samples": int(max(r.count for r in self.hidden[0])),
                  "tokens": self.tokens},
            experts=experts,
            extra={k: torch.stack([r.result() for r in rs]).cpu() for k, rs in self.extra.items()},
        )
        scores = (result.heads, result.neurons, result.hidden_per_layer, *result.extra.values()) + \
            ((experts,) if moe else ())
        if not all(torch.isfinite(t).all() for t in scores):
            raise ImportanceError("importance scores are not finite (NaN/inf activations); check the model's dtype")
        return result


class _ForwardOverride:
    """Replaces ``module``'s forward by ``make(module)`` until :meth:`remove` (a handle like a hook's)."""

    def __init__(self, module: torch.nn.Module, make):
        self.module = module
        module.forward = make(module)

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def batch_tokens(ids: torch.Tensor, mask: torch.Tensor | None) -> int:
    """Real (unpadded) tokens of a batch: the count the scores' metadata reports."""
    return int(mask.sum()) if mask is not None else ids.numel()


def as_batches(batches: Iterable[dict] | torch.Tensor, batch_size: int) -> list[dict]:
    """A [N, seq_len] LongTensor of token blocks split into ``batch_size`` rows, or the given dicts."""
    if isinstance(batches, torch.Tensor):
        return [{"input_ids": batches[i: i + batch_size]} for i in range(0, len(batches), batch_size)]
    return list(batches)


@torch.no_grad()
def estimate_importance(
    model,
    batches: Iterable[dict] | torch.Tensor,
    aggregation: str = "l2_mean",
    batch_size: int = 8,
    progress: bool = True,
) -> Importance:
    """Run the calibration batches through ``model.base_model`` with hooks and return the scores.

    ``batches`` is either a [N, seq_len] LongTensor of token blocks (split into ``batch_size``) or an
    iterable of dicts with ``input_ids`` and optional ``attention_mask``.
    """
    device = next(model.parameters()).device
    scores = WidthScores(model.config, aggregation, device)
    handles = [h for i, layer in enumerate(_decoder_layers(model)) for h in scores.attach(layer, i)]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(as_batches(batches, batch_size), desc="importance", disable=not progress):
            ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = None if mask is None else mask.to(device)
            scores.set_batch(ids, mask)
            # base model only: the LM head is not needed for any score
            model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return scores.result()


def plot_importance(imp: Importance, out_path: str | Path, title: str = "") -> Path:
    """One PNG: head scores per layer (heatmap), neuron score spread per layer, sorted hidden scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    im = axes[0].imshow(imp.heads.T.numpy(), aspect="auto", cmap="viridis", origin="lower")
    axes[0].set(title="attention heads", xlabel="layer", ylabel="query head")
    fig.colorbar(im, ax=axes[0])
    q = torch.quantile(imp.neurons.flatten(1), torch.tensor([0.1, 0.5, 0.9]), dim=1).numpy()  # MoE: all experts
    xs = range(imp.neurons.shape[0])
    axes[1].fill_between(xs, q[0], q[2], alpha=0.3, label="10-90%")
    axes[1].plot(xs, q[1], label="median")
    axes[1].set(title="MLP neurons", xlabel="layer", ylabel="score", yscale="log")
    axes[1].legend()
    h = torch.sort(imp.hidden, descending=True).values.numpy()
    axes[2].plot(h)
    axes[2].set(title="hidden channels (sorted)", xlabel="rank", ylabel="score", yscale="log")
    fig.suptitle(title or f"importance ({imp.meta.get('aggregation', '?')})")
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def importance_summary(imp: Importance) -> dict:
    """Small, json-able facts about the scores, for logs and reports."""
    return {
        "aggregation": imp.meta.get("aggregation"),
        "samples": imp.meta.get("samples"),
        "tokens": imp.meta.get("tokens"),
        "least_important_heads": [
            [int(i) for i in torch.argsort(imp.heads[l])[: max(1, imp.heads.shape[1] // 3)]]
            for l in range(imp.heads.shape[0])
        ],
        "hidden_top_share": float(torch.sort(imp.hidden, descending=True).values[: max(1, math.ceil(0.1 * imp.hidden.numel()))].sum() / imp.hidden.sum()),
    }
