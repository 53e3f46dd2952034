"""Qwen3 (dense): q/k RMSNorms over head_dim (shared by all heads, so head and hidden pruning leave them as they
are); ``layer_types`` holds one entry per layer."""

from .base import DenseDecoder


class Qwen3(DenseDecoder):
    model_type = "qwen3"
    config_fields = DenseDecoder.config_fields + ("attention_bias", "layer_types", "sliding_window",
                                                  "use_sliding_window", "max_window_layers")
    bias_fields = ("attention_bias",)
    per_layer_fields = ("layer_types",)
    layer_rules = {**DenseDecoder.layer_rules, "self_attn.q_norm.weight": (None, None),
                   "self_attn.k_norm.weight": (None, None)}
    # examples/models/core/qwen/convert_checkpoint.py: tensorrt_llm/models/qwen/config.py accepts model_type qwen3
    # (q/k norms as q_layernorm/k_layernorm); MODEL_MAP maps Qwen3ForCausalLM to QWenForCausalLM (checked 2026-12)
    trtllm_example = "qwen"

    def attention_norms(self, config) -> int:
        return 2 * self.head_dim(config)


FAMILY = Qwen3()
