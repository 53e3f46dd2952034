"""Architecture facts: what differs between the model families we prune, and what follows from a config alone.

Every architecture we prune stores its weights under the same Llama-style names (``model.layers.N.
self_attn.q_proj`` ...). What differs is a handful of facts, kept in one small table: whether the
attention has q/k norms (Qwen3), whether transformers' config insists on ``hidden_size %
num_attention_heads == 0`` (Llama in transformers 5.x), and which config fields hold one entry per
layer. Nothing else in the code branches on the model type.

From a config alone: the head width (:func:`head_dim_of`), the parameter count (:func:`count_parameters`) and the
forward FLOPs of a request (:func:`forward_flops`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MinitronError


class UnsupportedModelError(MinitronError):
    """The checkpoint's ``model_type`` is not in :data:`ARCHITECTURES`."""


@dataclass(frozen=True)
class ArchSpec:
    """What the pruner needs to know about one ``model_type``."""

    model_type: str
    qk_norm: bool = False
    """Attention has ``q_norm``/``k_norm`` RMSNorms over ``head_dim`` (shared by all heads, so head
    and hidden pruning leave them untouched)."""
    hidden_divisible_by_heads: bool = False
    """The transformers config validator rejects ``hidden_size % num_attention_heads != 0`` even
    when ``head_dim`` is explicit (LlamaConfig in transformers 5.x)."""
    per_layer_fields: tuple[str, ...] = ()
    """Config fields that hold one entry per decoder layer and are sliced when layers are dropped."""


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", hidden_divisible_by_heads=True),
    # Mistral-NeMo (head_dim 128 with hidden 5120) is model_type "mistral" with an explicit head_dim.
    "mistral": ArchSpec("mistral"),
    "qwen2": ArchSpec("qwen2", per_layer_fields=("layer_types",)),
    "qwen3": ArchSpec("qwen3", qk_norm=True, per_layer_fields=("layer_types",)),
}


def arch_spec(config) -> ArchSpec:
    """The adapter for a config (object or dict); a clear error for anything unsupported."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model_type={model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def head_dim_of(config) -> int:
    hd = getattr(config, "head_dim", None)
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


def count_parameters(config) -> dict[str, int]:
    """Analytic parameter count of a decoder-only model from its config alone.

    ``embedding`` counts the input embedding and, when untied, the LM head; ``non_embedding`` is the
    rest (the convention of the Minitron papers and of scaling-law work).
    """
    spec = arch_spec(config)
    h = config.hidden_size
    hd = head_dim_of(config)
    q = config.num_attention_heads * hd
    kv = config.num_key_value_heads * hd
    inter = config.intermediate_size
    vocab = config.vocab_size
    attn_bias = bool(getattr(config, "attention_bias", False))
    mlp_bias = bool(getattr(config, "mlp_bias", False))

    attn = h * q + 2 * h * kv + q * h
    if spec.model_type == "qwen2":  # q/k/v always carry a bias, o_proj never
        attn += q + 2 * kv
    elif attn_bias:  # Llama/Mistral attention_bias: q, k, v and o
        attn += q + 2 * kv + h
    if spec.qk_norm:
        attn += 2 * hd
    mlp = 3 * h * inter + ((2 * inter + h) if mlp_bias else 0)
    per_layer = attn + mlp + 2 * h  # two RMSNorms
    body = config.num_hidden_layers * per_layer + h  # + final norm
    embedding = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return {"total": body + embedding, "embedding": embedding, "non_embedding": body}


def forward_flops(config, tokens: int, context: int = 0) -> float:
    """Multiply-add FLOPs (2 per MAC) of a forward pass over ``tokens`` new tokens that follow
    ``context`` cached ones: every weight matmul (the LM head included, embeddings are lookups) plus
    attention scores and values, ``4 * layers * query_width`` per (query, key) pair, causal.

    ``forward_flops(c, isl + osl)`` approximates one request of ``isl`` prompt and ``osl`` generated
    tokens (prefill and decode do the same arithmetic, decode one token at a time); the runtime
    comparison's expected speedup of a student is the teacher's FLOPs over the student's.
    """
    q_width = config.num_attention_heads * head_dim_of(config)
    params = count_parameters(config)
    lm_head = config.vocab_size * config.hidden_size
    matmul = params["non_embedding"] + lm_head  # norms are a rounding error next to the matmuls
    # key positions seen by the new tokens: sum_{t=1..tokens} (context + t)
    pairs = tokens * context + tokens * (tokens + 1) / 2
    return 2.0 * matmul * tokens + 4.0 * config.num_hidden_layers * q_width * pairs
