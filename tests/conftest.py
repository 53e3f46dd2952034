import os
import shutil

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

# the model types the tiny-model tests run on: every family of minitron_hf.arch
from minitron_hf.arch import FAMILIES  # noqa: E402

CONFIGS = list(FAMILIES)


def tiny_config(model_type: str, **kw):
    """A few-layer random model of the given architecture: 6 query heads in 2 KV groups, head_dim 16. Any
    ``model_type`` transformers knows (``AutoConfig.for_model``): the conformance suite builds every family with it."""
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
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **kw)).eval()
    # random init has tiny weights; widen norms so channel importance differs across channels
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(torch.rand_like(p) * 2)
            if n.endswith(".mixer.D"):  # Mamba2's skip weight starts at 1 in every head: make heads differ
                p.copy_(torch.rand_like(p) * 2)
    model.config.architectures = [type(model).__name__]
    return model


@pytest.fixture(params=list(CONFIGS))
def model_type(request):
    return request.param


@pytest.fixture(scope="session")
def default_model_dir():
    """The embedded default model converted to an HF checkpoint (cached across runs)."""
    from minitron_hf.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def save_with_tokenizer(model, d, default_model_dir):
    """Save ``model`` to ``d`` with the default model's tokenizer files (and chat template)."""
    model.save_pretrained(d)
    for f in default_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(f, d / f.name)
    return d


@pytest.fixture
def tiny_checkpoint(tmp_path, model_type, default_model_dir):
    """A saved tiny model of each architecture, carrying the default model's tokenizer files."""
    model = tiny_model(model_type, vocab_size=49152)  # the real tokenizer's vocabulary
    return save_with_tokenizer(model, tmp_path / f"tiny-{model_type}", default_model_dir), model
