"""SmolLM3 (``model_type: smollm3``): the Llama-style decoder in which some layers use no rotary embedding
(NoPE). ``no_rope_layers`` (1 = RoPE, 0 = NoPE) and ``layer_types`` hold one entry per layer and are sliced with
the layers, so a kept layer keeps its own kind; ``no_rope_layer_interval`` only builds the list when a config has
none, and an explicit list is always written."""

from .base import DenseDecoder


class SmolLM3(DenseDecoder):
    model_type = "smollm3"
    config_fields = DenseDecoder.config_fields + ("attention_bias", "mlp_bias", "layer_types", "no_rope_layers",
                                                  "no_rope_layer_interval", "sliding_window", "use_sliding_window",
                                                  "max_window_layers")
    bias_fields = ("attention_bias", "mlp_bias")
    per_layer_fields = ("layer_types", "no_rope_layers")


FAMILY = SmolLM3()
