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
    # Checked against NVIDIA/TensorRT-LLM main (2026-12): tensorrt_llm/models/__init__.py MODEL_MAP has no
    # SmolLM3ForCausalLM, no examples/models/core/*/convert_checkpoint.py reads no_rope_layers (llama's would build
    # RoPE into every layer: a different model), and tensorrt_llm/_torch/models has no modeling_smollm3.py
    trtllm_example = ""
    trtllm_unsupported = ("TensorRT-LLM has no SmolLM3 model: no converter or PyTorch-backend model knows its NoPE "
                          "layers (no_rope_layers), and llama's converter would silently put RoPE in every layer")


FAMILY = SmolLM3()
