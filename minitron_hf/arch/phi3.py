"""Phi-3 / Phi-3.5 / Phi-4-mini (``model_type: phi3``): the Llama-style decoder with fused tensors. ``qkv_proj``'s
rows are q, then k, then v; ``gate_up_proj``'s rows are gate, then up. Both are sliced per part (heads within q, KV
heads within k and v, the same neurons within gate and up). ``head_dim`` (hidden / heads in the source) is written
explicitly into the pruned config, which Phi3Attention reads."""

from .base import DenseDecoder


class Phi3(DenseDecoder):
    model_type = "phi3"
    config_fields = DenseDecoder.config_fields + ("embd_pdrop", "resid_pdrop", "original_max_position_embeddings",
                                                  "sliding_window", "partial_rotary_factor",
                                                  "attention_bias")  # Phi-3's own configs carry false; unused
    fused_axes = {"qkv": ("q", "kv", "kv"), "gate_up": ("mlp", "mlp")}
    layer_rules = {
        "self_attn.qkv_proj.weight": ("qkv", "hidden"),
        "self_attn.o_proj.weight": ("hidden", "q"),
        "mlp.gate_up_proj.weight": ("gate_up", "hidden"),
        "mlp.down_proj.weight": ("hidden", "mlp"),
        "input_layernorm.weight": ("hidden", None),
        "post_attention_layernorm.weight": ("hidden", None),
    }
    head_merge_tensors = {"self_attn.qkv_proj.weight": 0, "self_attn.o_proj.weight": 1}  # q rows come first
    linears = {"qkv_proj": ("hidden", "qkv"), "o_proj": ("q", "hidden"), "gate_up_proj": ("hidden", "gate_up"),
               "down_proj": ("mlp", "hidden")}
    # examples/models/core/phi/convert_checkpoint.py: its supported_models list has Phi3ForCausalLM (-> the
    # tensorrt_llm.models Phi3ForCausalLM); NVIDIA/TensorRT-LLM main, checked 2026-12
    trtllm_example = "phi"
    # bias_fields stays empty: Phi3Attention has no biases, whatever a config's attention_bias says


FAMILY = Phi3()
