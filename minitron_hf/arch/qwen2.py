"""Qwen2 / Qwen2.5: q/k/v always carry a bias (o_proj never); ``layer_types`` holds one entry per layer."""

from .base import DenseDecoder


class Qwen2(DenseDecoder):
    model_type = "qwen2"
    config_fields = DenseDecoder.config_fields + ("layer_types", "sliding_window", "use_sliding_window",
                                                  "max_window_layers")
    per_layer_fields = ("layer_types",)
    # examples/models/core/qwen/convert_checkpoint.py (MODEL_MAP: Qwen2ForCausalLM -> QWenForCausalLM; checked 2026-12)
    trtllm_example = "qwen"
    # vllm 0.32.0 vllm/model_executor/models/qwen2.py, Qwen2Attention: head_dim = hidden_size // total_num_heads,
    # config.head_dim unread (measured: benchmarks/results/serve_qwen2_hidden32.md, serve_qwen2_head_dim.md)
    vllm_head_dim_from_hidden = True

    def attention_biases(self, config, q: int, kv: int, h: int) -> int:
        return q + 2 * kv


FAMILY = Qwen2()
