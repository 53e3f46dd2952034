"""Llama (Llama 2/3/3.1/3.2, SmolLM2 and every checkpoint with ``model_type: llama``)."""

from .base import DenseDecoder


class Llama(DenseDecoder):
    model_type = "llama"
    config_fields = DenseDecoder.config_fields + ("attention_bias", "mlp_bias", "pretraining_tp")
    # LlamaConfig in transformers 5.x rejects hidden_size % num_attention_heads != 0 even with an explicit head_dim
    bias_fields = ("attention_bias", "mlp_bias")
    hidden_divisible_by_heads = True


FAMILY = Llama()
