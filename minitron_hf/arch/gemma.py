"""Gemma 2 (``gemma2``) and Gemma 3 text (``gemma3_text``).

What differs from the Llama-style decoder:

- four RMSNorms per layer: ``input_layernorm`` and ``pre_feedforward_layernorm`` feed attention and the MLP,
  ``post_attention_layernorm`` and ``post_feedforward_layernorm`` normalise their outputs before the residual add.
  All four are sliced with the hidden channels. The hidden-channel importance probes are the two that feed the
  sub-blocks, as the Llama-style input and post-attention norms are (the paper's LayerNorm activations);
- RMSNorm computes ``x_hat * (1 + w)``: slicing ``w`` keeps that form;
- the embedding is multiplied by ``sqrt(hidden_size)`` inside the model. Pruning the hidden size to ``h'`` would
  shrink every embedding by ``sqrt(h' / h)``. To keep the network's function, the pruned embedding is scaled by
  ``c = sqrt(h / h')`` (so the residual stream starts exactly as before on the kept channels), and, because the
  LM head is the same (tied) matrix, the final norm's ``(1 + w)`` is divided by ``c`` (so the logits of a given
  final state are unchanged too). With an untied head only the embedding is scaled;
- ``layer_types`` (the sliding-window / global pattern) has one entry per layer and is sliced with the layers;
  ``sliding_window`` and ``query_pre_attn_scalar`` are kept (head_dim is never pruned);
- attention logit soft capping lives inside the model; the final logit soft cap (``final_logit_softcapping``,
  Gemma 2) is part of :meth:`logits`: the chunked KD loss applies it per chunk (``student_softcap``,
  ``teacher_softcap``), and the sequential LM-loss head per vocabulary block;
- Gemma 3 also has q/k RMSNorms over head_dim (unsliced, like Qwen3's).

Gemma needs a BOS token at the start of every sequence (measured on Gemma 3 270M: loss 2.72 with, 3.83 without).
"""

from __future__ import annotations

import math

import torch

from .base import DenseDecoder


class Gemma2(DenseDecoder):
    model_type = "gemma2"
    config_fields = DenseDecoder.config_fields + (
        "hidden_activation", "query_pre_attn_scalar", "sliding_window", "layer_types", "attn_logit_softcapping",
        "final_logit_softcapping", "attention_bias", "use_bidirectional_attention", "cache_implementation")
    bias_fields = ("attention_bias",)
    per_layer_fields = ("layer_types",)
    layer_rules = {**DenseDecoder.layer_rules, "pre_feedforward_layernorm.weight": ("hidden", None),
                   "post_feedforward_layernorm.weight": ("hidden", None)}
    hidden_probes = ("input_layernorm", "pre_feedforward_layernorm")
    # examples/models/core/gemma/convert_checkpoint.py with --ckpt-type hf: tensorrt_llm/models/gemma/config.py
    # (NVIDIA/TensorRT-LLM main, checked 2026-12) reads model_type gemma, gemma2 and gemma3_text (GEMMA2_ARCHITECTURE
    # Gemma2ForCausalLM, GEMMA3_ARCHITECTURE Gemma3ForCausalLM); Gemma3Text inherits this
    trtllm_example = "gemma"

    def count_parameters(self, config) -> dict[str, int]:
        n = super().count_parameters(config)
        extra = config.num_hidden_layers * 2 * config.hidden_size  # the pre/post feed-forward norms
        return {"total": n["total"] + extra, "embedding": n["embedding"], "non_embedding": n["non_embedding"] + extra}

    def embed_scale(self, config, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(config.hidden_size ** 0.5).to(dtype)

    def _scale(self, plan) -> float:
        return math.sqrt(plan.src_sizes["hidden"] / plan.new_config["hidden_size"])

    def adjust(self, name: str, tensor: torch.Tensor, plan) -> torch.Tensor:
        c = self._scale(plan)
        if c == 1.0:
            return tensor
        if name == "model.embed_tokens.weight":
            return (tensor.float() * c).to(tensor.dtype)
        if name == "model.norm.weight" and plan.new_config.get("tie_word_embeddings", True):
            return ((1.0 + tensor.float()) / c - 1.0).to(tensor.dtype)
        return tensor

    def logit_softcap(self, config) -> float | None:
        return getattr(config, "final_logit_softcapping", None) or None


class Gemma3Text(Gemma2):
    model_type = "gemma3_text"
    config_fields = Gemma2.config_fields + ("rope_local_base_freq",)
    layer_rules = {**Gemma2.layer_rules, "self_attn.q_norm.weight": (None, None),
                   "self_attn.k_norm.weight": (None, None)}

    def attention_norms(self, config) -> int:
        return 2 * self.head_dim(config)


GEMMA2 = Gemma2()
GEMMA3_TEXT = Gemma3Text()
