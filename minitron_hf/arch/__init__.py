"""Architecture facts: one module per model family behind one interface (:class:`~.base.Family`), and what follows
from a config alone.

``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``phi3``, ``smollm3``, ``gemma2``, ``gemma3_text``, the mixtures of
experts ``mixtral`` and ``qwen3_moe`` (:mod:`.moe`) and the hybrid Mamba2/attention/MLP ``nemotron_h``
(:mod:`.nemotron_h`) each have a module here stating their layout (prunable axes,
slicing rules, probe points, parameter count, pruned config, logits, LoRA/FP8/TensorRT-LLM names). Pruning,
importance, distillation and export ask :func:`family_of` for a model's family and use only that interface: nothing
else in the code branches on the model type. Adding a family is one module here, one entry in :data:`FAMILIES`,
and its run of the conformance suite (``tests/test_arch_conformance.py``).

From a config alone: the head width (:func:`head_dim_of`), the parameter count (:func:`count_parameters`) and the
forward FLOPs of a request (:func:`forward_flops`).
"""

from __future__ import annotations

from . import gemma, llama, mistral, moe, nemotron_h, phi3, qwen2, qwen3, smollm3
from .base import Family, UnsupportedModelError

FAMILIES: dict[str, Family] = {f.model_type: f for f in (llama.FAMILY, mistral.FAMILY, qwen2.FAMILY, qwen3.FAMILY,
                                                          phi3.FAMILY, smollm3.FAMILY, gemma.GEMMA2,
                                                          gemma.GEMMA3_TEXT, moe.MIXTRAL, moe.QWEN3_MOE,
                                                          nemotron_h.FAMILY)}

__all__ = ["FAMILIES", "Family", "UnsupportedModelError", "count_parameters", "family_of", "forward_flops",
           "head_dim_of"]


def family_of(config, check: bool = True) -> Family:
    """The family of a config (object or mapping); a clear error for a model type without a module, and (``check``)
    for a config carrying fields its module does not know."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type={model_type!r} is not supported; supported model types: {', '.join(sorted(FAMILIES))}")
    family = FAMILIES[model_type]
    if check:
        family.check_config(config)
    return family


def head_dim_of(config) -> int:
    return family_of(config, check=False).head_dim(config)


def count_parameters(config) -> dict[str, int]:
    """Analytic parameter count of a decoder-only model from its config alone (see
    :meth:`~.base.Family.count_parameters`)."""
    return family_of(config, check=False).count_parameters(config)


def forward_flops(config, tokens: int, context: int = 0) -> float:
    """Multiply-add FLOPs (2 per MAC) of a forward pass over ``tokens`` new tokens that follow
    ``context`` cached ones: every weight matmul (the LM head included, embeddings are lookups) plus
    attention scores and values, ``4 * attention layers * query_width`` per (query, key) pair, causal (a Mamba2
    layer's scan is not counted beyond its projections).

    ``forward_flops(c, isl + osl)`` approximates one request of ``isl`` prompt and ``osl`` generated
    tokens (prefill and decode do the same arithmetic, decode one token at a time); the runtime
    comparison's expected speedup of a student is the teacher's FLOPs over the student's.
    """
    q_width = config.num_attention_heads * head_dim_of(config)
    params = count_parameters(config)
    lm_head = config.vocab_size * config.hidden_size
    inactive = params["total"] - params.get("active", params["total"])  # experts a token is not routed to
    matmul = params["non_embedding"] - inactive + lm_head  # norms are a rounding error next to the matmuls
    # key positions seen by the new tokens: sum_{t=1..tokens} (context + t)
    pairs = tokens * context + tokens * (tokens + 1) / 2
    layers = family_of(config, check=False).attention_layers(config)  # a hybrid: its attention layers only
    return 2.0 * matmul * tokens + 4.0 * layers * q_width * pairs
