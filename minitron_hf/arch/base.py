"""The architecture interface: what one model family tells the rest of the code.

A :class:`Family` states everything pruning, importance, distillation and export need to know about a model's
layout, so none of them branches on ``model_type``:

- the prunable axes (target fields) and the config fields it knows (a config carrying any other is refused:
  a lookalike of a supported family is never pruned silently wrong);
- per-tensor slicing rules: for each weight, which axis its rows and columns belong to;
- the importance probe points inside a decoder layer;
- the analytic parameter count;
- the pruned config (fields sliced per layer, constraints of transformers' config class);
- the function from final hidden states to logits that the KD loss uses;
- the linear-layer names for LoRA and FP8, and how TensorRT-LLM converts it.

:class:`DenseDecoder` is the Llama-style decoder most families share; each family module subclasses it and sets
what differs.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from ..errors import MinitronError


def softcap(z: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(z / cap)`` (a final-logit soft cap, as Gemma 2's forward applies it), or ``z`` when ``cap`` is
    None."""
    return z if cap is None else cap * torch.tanh(z / cap)


class UnsupportedModelError(MinitronError):
    """A checkpoint whose ``model_type`` has no family module, or whose config carries fields its module does not
    know."""


# PretrainedConfig's own keys and metadata every Hub config may carry: they change nothing in the network
GENERIC_CONFIG_FIELDS = (
    "_*", "architectures", "auto_map", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states", "problem_type", "return_dict",
    "transformers_version", "*_token_id", "use_cache", "initializer_range", "quantization_config",
)

AXES = ("hidden", "q", "kv", "mlp")  # hidden channels, query-head channels, KV-head channels, MLP neurons


@dataclass(frozen=True)
class Probe:
    """One importance probe point of a decoder layer: the module at ``path`` (inside the layer), its first input
    (``output=False``, a forward pre-hook) or its output (a forward hook), turned by ``transform`` into non-negative
    per-token channel activations [batch, seq, channels] that feed the score ``score`` (``"heads"``, ``"neurons"``,
    ``"hidden"`` -- then ``slot`` is the index among the layer's hidden probes -- or one of the family's
    :meth:`Family.extra_scores`).

    ``routed``: the module is a mixture of experts' experts module (called with the hidden states and the router's
    top-k experts and weights). Importance replaces its forward during calibration and scores each expert and each
    expert's neurons on the tokens routed to it (``score`` is ``"experts"``; ``transform`` is unused)."""

    score: str
    path: str
    output: bool
    transform: Callable | None
    slot: int = 0
    routed: bool = False


class Family:
    """One model family. Subclasses set the class attributes; the methods have the Llama-style defaults."""

    model_type: ClassVar[str]
    # the target fields that can be pruned
    prunable: ClassVar[tuple[str, ...]] = ("hidden_size", "intermediate_size", "num_attention_heads",
                                           "num_key_value_heads", "num_hidden_layers")
    # config fields this module knows, besides GENERIC_CONFIG_FIELDS (glob patterns allowed)
    config_fields: ClassVar[tuple[str, ...]] = ()
    # config fields that switch biases on (attention_bias, mlp_bias): the parameter count follows them
    bias_fields: ClassVar[tuple[str, ...]] = ()
    # config fields with one entry per decoder layer: sliced when layers are dropped
    per_layer_fields: ClassVar[tuple[str, ...]] = ()
    # transformers' config class rejects hidden_size % num_attention_heads != 0 even with an explicit head_dim
    hidden_divisible_by_heads: ClassVar[bool] = False
    # fused axes: a tensor whose rows concatenate several axes (Phi-3's qkv_proj: q, then k, then v) -> its parts,
    # in order; it is sliced by each part's kept indices, offset by the source sizes of the parts before it
    fused_axes: ClassVar[dict[str, tuple[str, ...]]] = {}
    # tensor name under ``model.layers.N.`` -> (row axis, column axis), None = not sliced along that dimension
    layer_rules: ClassVar[dict[str, tuple[str | None, str | None]]] = {}
    # tensor name outside the layers -> (row axis, column axis)
    global_rules: ClassVar[dict[str, tuple[str | None, str | None]]] = {}
    # merging pruned heads into kept ones (arXiv 2407.14679 sec. 2.3): tensor under the layer -> its query dim
    head_merge_tensors: ClassVar[dict[str, int]] = {}
    # importance probe points, attribute paths inside a decoder layer: the input of the head probe is
    # [..., heads * head_dim], the input of the neuron probe [..., intermediate]; the hidden probes' outputs
    # [..., hidden]
    head_probe: ClassVar[str] = ""
    neuron_probe: ClassVar[str] = ""
    hidden_probes: ClassVar[tuple[str, ...]] = ()
    # linear layers of a decoder layer -> (in axis, out axis): FP8 quantization and its divisibility check
    linears: ClassVar[dict[str, tuple[str, str]]] = {}
    # $TRTLLM_EXAMPLES/models/core/<this>/convert_checkpoint.py converts a BF16 checkpoint for TensorRT-LLM; empty where
    # no TensorRT-LLM converter supports the model type (``minitron export trtllm`` then refuses it, saying
    # ``trtllm_unsupported``: why, as checked against TensorRT-LLM's sources)
    trtllm_example: ClassVar[str] = ""
    trtllm_unsupported: ClassVar[str] = ""
    # vLLM's model class for this family ignores config.head_dim and takes hidden_size // num_attention_heads:
    # ``minitron serve`` refuses checkpoints where the two differ (e.g. hidden pruned, heads kept)
    vllm_head_dim_from_hidden: ClassVar[bool] = False
    # the config field that is the width of the "mlp" axis (a mixture of experts: each expert's FFN width)
    mlp_field: ClassVar[str] = "intermediate_size"
    # Mixture of experts (left empty by dense families): the config field with the number of routed experts (a target
    # field; its length is the per-layer "experts" axis), and the on-disk name prefix, under ``model.layers.N.``, of
    # the per-expert tensors ``<prefix>.<expert>.<name>``: their slicing rules are keyed ``<prefix>.*.<name>``
    experts_field: ClassVar[str] = ""
    expert_prefix: ClassVar[str] = ""
    # whether the model class ties the LM head to the input embedding when tie_word_embeddings is set (transformers
    # 5.19's Nemotron-H never does: its _tied_weights_keys is empty)
    can_tie_embeddings: ClassVar[bool] = True
    # target fields of width axes besides hidden, heads, the MLP and experts (Nemotron-H: the Mamba heads and head
    # dim); they need importance scores, and the family slices along them (:meth:`layer_axes`)
    extra_width_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def is_moe(self) -> bool:
        """Whether the decoder layers route tokens to experts (the plan and the scores then carry an experts axis)."""
        return bool(self.experts_field)

    def num_experts(self, config) -> int:
        """Routed experts per layer (config object or mapping); 0 for a dense family."""
        return 0

    def expert_of(self, suffix: str) -> tuple[int, str] | None:
        """(expert index, rule key) of a per-expert tensor name under the layer, or None for any other tensor. The
        rule key has ``*`` for the index: ``key.replace("*", str(new_index))`` is the renumbered name."""
        if not self.expert_prefix or not suffix.startswith(self.expert_prefix + "."):
            return None
        index, _, rest = suffix[len(self.expert_prefix) + 1:].partition(".")
        if not index.isdigit():
            return None
        return int(index), f"{self.expert_prefix}.*.{rest}"

    def width_multiple(self, config) -> int:
        """hidden_size and the MLP width of a pruned model must be multiples of this (for it to run at all)."""
        return 1

    def target_problem(self, config, new: dict) -> str | None:
        """What is wrong with a resolved target under this family's constraints (``new``: target field -> value,
        every prunable field present), naming the fields and what is allowed; None when it is fine."""
        return None

    # ------------------------------------------------------------------ config
    def check_config(self, config) -> None:
        """Refuse a config with fields this module does not know, naming them: a lookalike (a remote-code model
        that says it is a llama, a newer transformers field) is never pruned or distilled silently wrong."""
        d = config if isinstance(config, dict) else config.to_dict()
        patterns = GENERIC_CONFIG_FIELDS + self.config_fields
        unknown = sorted(k for k in d if not any(fnmatch.fnmatchcase(k, p) for p in patterns))
        if unknown:
            raise UnsupportedModelError(
                f"model_type={self.model_type!r}: the config carries fields the {self.model_type} module "
                f"(minitron_hf/arch/) does not know: {', '.join(unknown)}; it may be a different architecture under "
                f"that name, so it is refused rather than pruned or distilled wrong")

    def head_dim(self, config) -> int:
        hd = getattr(config, "head_dim", None)
        return int(hd) if hd else config.hidden_size // config.num_attention_heads

    def axis_sizes(self, config) -> dict[str, int]:
        """The length of every axis the slicing rules and linears name, from the config."""
        hd = self.head_dim(config)
        sizes = {"hidden": config.hidden_size, "q": config.num_attention_heads * hd,
                 "kv": config.num_key_value_heads * hd, "mlp": getattr(config, self.mlp_field)}
        if self.is_moe:
            sizes["experts"] = self.num_experts(config)
        return {**sizes, **{name: sum(sizes[p] for p in parts) for name, parts in self.fused_axes.items()}}

    def fused_index(self, axis: str, idx: dict[str, torch.Tensor], src_sizes: dict[str, int]) -> torch.Tensor:
        """Kept rows of a fused axis: each part's kept indices, offset by the source sizes of the parts before it."""
        out, offset = [], 0
        for part in self.fused_axes[axis]:
            out.append(idx[part] + offset)
            offset += src_sizes[part]
        return torch.cat(out)

    def pruned_config(self, config, new: dict) -> dict:
        """The pruned model's config.json mapping: the source's, with the target's sizes and an explicit head_dim
        (never pruned). Per-layer fields whose length no longer matches are None until the plan fills them."""
        d = config.to_dict()
        aliases = getattr(type(config), "attribute_map", {})  # e.g. num_experts is stored as num_local_experts
        d.update({aliases.get(k, k): v for k, v in new.items()})
        d["head_dim"] = self.head_dim(config)
        d.pop("quantization_config", None)
        for f in self.per_layer_fields:
            if d.get(f) is not None and len(d[f]) != new["num_hidden_layers"]:
                d[f] = None
        return d

    def count_parameters(self, config) -> dict[str, int]:
        """Analytic parameter count from the config alone: ``embedding`` is the input embedding and, when untied,
        the LM head; ``non_embedding`` the rest (the convention of the Minitron papers and of scaling-law work)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ heterogeneous layers
    def layer_types(self, config) -> list[str]:
        """The kind of each decoder layer, one entry per layer: it decides the layer's probes
        (:meth:`layer_probes`), its linears (:meth:`layer_linears`) and its family-specific axes
        (:meth:`layer_axes`). Uniform families: every layer is a ``"decoder"`` layer."""
        return ["decoder"] * config.num_hidden_layers

    def layer_probes(self, config, layer_type: str) -> list[Probe]:
        """The importance probes of a layer of this type. Default: the head probe's input viewed [heads, head_dim]
        (L2 norm over head_dim), the neuron probe's input (magnitude) and every hidden probe's output (magnitude). A
        mixture of experts probes its experts module instead of the neuron probe (a ``routed`` probe)."""
        H, hd = config.num_attention_heads, self.head_dim(config)
        return [Probe("heads", self.head_probe, False, lambda x: x.view(*x.shape[:-1], H, hd).float().norm(dim=-1)),
                Probe("neurons", self.neuron_probe, False, torch.abs),
                *(Probe("hidden", p, True, torch.abs, slot) for slot, p in enumerate(self.hidden_probes))]

    def extra_scores(self, config) -> dict[str, tuple[int, ...]]:
        """Per-layer shapes of the score tensors this family needs besides heads, neurons, hidden (and experts):
        name -> shape of one layer's score. A layer whose type has no such probe keeps zeros."""
        return {}

    def layer_axes(self, config, new_config: dict, scores: dict | None, layer_type: str) -> dict[str, torch.Tensor]:
        """Kept indices of the family's own per-layer axes for one layer (``scores``: that layer's
        :meth:`extra_scores`, or None to keep everything in order), most important first. Each axis indexes the
        source's positions, so a plan followed by another composes by indexing."""
        return {}

    # a mixture of experts: one expert's linears (name -> (in axis, out axis)), which each of a layer's experts holds
    expert_linears: dict[str, tuple[str, str]] = {}

    def layer_linears(self, layer_type: str) -> dict[str, tuple[str, str]]:
        """The linears a layer of this type holds (name -> (in axis, out axis)); uniform families: all of them."""
        return dict(self.linears)

    def search_axes(self, config) -> dict[str, int]:
        """The family's own width fields ``minitron search`` enumerates besides hidden, MLP, heads and experts:
        field -> step (values from the source's down in multiples of the step)."""
        return {}

    def attention_layers(self, config) -> int:
        """How many decoder layers hold attention (the FLOP count's score/value term); every layer by default."""
        return config.num_hidden_layers

    def kept_layers_problem(self, config, layers: list[int]) -> str | None:
        """What is wrong with keeping only source layers ``layers`` (checked when they are chosen), or None."""
        return None

    def fp8_problem(self, config) -> str | None:
        """Why ModelOpt FP8 export cannot handle this model (checked before any work), or None."""
        return None

    def prepare_quantization(self, model: torch.nn.Module) -> None:
        """Make the loaded model quantizable by NVIDIA ModelOpt before its quantizers are inserted: every weight to
        quantize in an ``nn.Linear`` whose name is the tensor's on-disk name (a mixture of experts unstacks its
        experts). Nothing to do for the families whose linears already are."""

    def sequential_problem(self, config) -> str | None:
        """Why layer-by-layer calibration cannot handle this model (checked before any layer is read), or None."""
        return None

    # ------------------------------------------------------------------ modules
    def probes(self, layer) -> tuple[torch.nn.Module, torch.nn.Module, list[torch.nn.Module]]:
        """(head probe, neuron probe, hidden probes) of one decoder layer."""
        get = layer.get_submodule
        return get(self.head_probe), get(self.neuron_probe), [get(p) for p in self.hidden_probes]

    def embed_scale(self, config, dtype: torch.dtype) -> torch.Tensor | None:
        """The factor the model's embedding module multiplies looked-up rows by (Gemma: sqrt(hidden_size), rounded
        to the weights' dtype as the model does), or None."""
        return None

    def adjust(self, name: str, tensor: torch.Tensor, plan) -> torch.Tensor:
        """A sliced tensor's values, changed where slicing alone would change the network's function (Gemma's
        embedding scale follows hidden_size); ``plan`` is the :class:`~minitron_hf.pruning.trim.PrunePlan`."""
        return tensor

    def logit_softcap(self, config) -> float | None:
        """A final-logit soft cap (``cap * tanh(z / cap)``), or None."""
        return None

    def logits(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config) -> torch.Tensor:
        """Final hidden states (after the final norm) to logits: what the model's own forward computes, and what
        the KD loss computes in chunks."""
        return softcap(F.linear(hidden, weight, bias), self.logit_softcap(config))

    @property
    def lora_targets(self) -> list[str]:
        return list(self.linears)


class DenseDecoder(Family):
    """The Llama-style decoder: q/k/v/o attention with GQA, a gated MLP, two RMSNorms per layer."""

    config_fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                     "rope_parameters", "rope_theta", "rope_scaling", "attention_dropout", "tie_word_embeddings")
    layer_rules = {
        "self_attn.q_proj.weight": ("q", "hidden"),
        "self_attn.q_proj.bias": ("q", None),
        "self_attn.k_proj.weight": ("kv", "hidden"),
        "self_attn.k_proj.bias": ("kv", None),
        "self_attn.v_proj.weight": ("kv", "hidden"),
        "self_attn.v_proj.bias": ("kv", None),
        "self_attn.o_proj.weight": ("hidden", "q"),
        "self_attn.o_proj.bias": ("hidden", None),
        "mlp.gate_proj.weight": ("mlp", "hidden"),
        "mlp.gate_proj.bias": ("mlp", None),
        "mlp.up_proj.weight": ("mlp", "hidden"),
        "mlp.up_proj.bias": ("mlp", None),
        "mlp.down_proj.weight": ("hidden", "mlp"),
        "mlp.down_proj.bias": ("hidden", None),
        "input_layernorm.weight": ("hidden", None),
        "post_attention_layernorm.weight": ("hidden", None),
    }
    global_rules = {
        "model.embed_tokens.weight": (None, "hidden"),
        "model.norm.weight": ("hidden", None),
        "lm_head.weight": (None, "hidden"),
    }
    head_merge_tensors = {"self_attn.q_proj.weight": 0, "self_attn.q_proj.bias": 0, "self_attn.o_proj.weight": 1}
    head_probe = "self_attn.o_proj"
    neuron_probe = "mlp.down_proj"
    hidden_probes = ("input_layernorm", "post_attention_layernorm")
    linears = {
        "q_proj": ("hidden", "q"), "k_proj": ("hidden", "kv"), "v_proj": ("hidden", "kv"), "o_proj": ("q", "hidden"),
        "gate_proj": ("hidden", "mlp"), "up_proj": ("hidden", "mlp"), "down_proj": ("mlp", "hidden"),
    }
    # examples/models/core/llama/convert_checkpoint.py (LLaMAForCausalLM; tensorrt_llm/models/__init__.py MODEL_MAP maps
    # LlamaForCausalLM, MistralForCausalLM and MixtralForCausalLM to it), NVIDIA/TensorRT-LLM main, checked 2026-12
    trtllm_example = "llama"

    def attention_biases(self, config, q: int, kv: int, h: int) -> int:
        """Bias parameters of one attention block (Llama/Mistral ``attention_bias``: q, k, v and o)."""
        on = "attention_bias" in self.bias_fields and getattr(config, "attention_bias", False)
        return q + 2 * kv + h if on else 0

    def attention_norms(self, config) -> int:
        """Parameters of norms inside attention (Qwen3's q/k norms over head_dim)."""
        return 0

    def attention_parameters(self, config) -> int:
        """Parameters of one attention block: q/k/v/o projections, their biases and norms."""
        h, hd = config.hidden_size, self.head_dim(config)
        q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
        return h * q + 2 * h * kv + q * h + self.attention_biases(config, q, kv, h) + self.attention_norms(config)

    def count_parameters(self, config) -> dict[str, int]:
        h, inter = config.hidden_size, config.intermediate_size
        attn = self.attention_parameters(config)
        mlp_bias = "mlp_bias" in self.bias_fields and getattr(config, "mlp_bias", False)
        mlp = 3 * h * inter + ((2 * inter + h) if mlp_bias else 0)
        per_layer = attn + mlp + 2 * h  # two RMSNorms
        body = config.num_hidden_layers * per_layer + h  # + final norm
        embedding = config.vocab_size * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
        return {"total": body + embedding, "embedding": embedding, "non_embedding": body}
