"""Every supported family at its real published shape: parameters before and after an example target, the analytic
count checked against instantiation, and pruning time and peak memory for the shapes that fit (issue 19).

1. Counts (every shape; seconds): the published config's shape is instantiated on the meta device (no memory), and
   `count_parameters` (the family's analytic count) must equal the skeleton's numel, before and after the target
   (the pruned config built by `resolve_target` + `make_plan`, as `minitron prune` builds it). MoE families report
   total and active parameters.
2. Pruning (`--prune`, shapes up to about 1B parameters): a random-weight bf16 checkpoint of the shape is written,
   then `minitron prune` runs on it in a fresh process (calibration on python-docs, fp32, in memory); wall time and
   peak RSS (VmHWM) of that process. Random weights: only time and memory mean something.

    python benchmarks/architectures.py [--prune] [--work DIR] [--keep]
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from common import write_result

# (name, model_type, published config fields, example target, prune in part 2)
SHAPES = [
    ("Llama-3.1-8B", "llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                   tie_word_embeddings=False),
     dict(hidden_size=3072, intermediate_size=9216), False),  # Llama-3.1-Minitron-4B-Width
    ("Llama-3.2-1B", "llama", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                   tie_word_embeddings=True, head_dim=64),
     dict(hidden_size=1536, intermediate_size=4096), True),
    ("Mistral-NeMo-12B", "mistral", dict(hidden_size=5120, intermediate_size=14336, num_hidden_layers=40,
                                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                         vocab_size=131072, tie_word_embeddings=False),
     dict(intermediate_size=11520, num_hidden_layers=40, hidden_size=4096), False),  # Mistral-NeMo-Minitron-8B
    ("Qwen2.5-7B", "qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                 num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                 tie_word_embeddings=False),
     dict(hidden_size=2688, intermediate_size=9472), False),
    ("Qwen3-8B", "qwen3", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                               tie_word_embeddings=False),
     dict(hidden_size=3072, intermediate_size=8192), False),
    ("Qwen3-0.6B", "qwen3", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                 tie_word_embeddings=True),
     dict(hidden_size=768, intermediate_size=1536), True),
    ("Phi-3-mini-4k", "phi3", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                                   tie_word_embeddings=False, pad_token_id=32000, bos_token_id=1,
                                   eos_token_id=32000),
     dict(hidden_size=2304, intermediate_size=4096, num_attention_heads=24, num_key_value_heads=24), False),
    ("SmolLM3-3B", "smollm3", dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                   num_attention_heads=16, num_key_value_heads=4, vocab_size=128256,
                                   tie_word_embeddings=True, pad_token_id=128004, bos_token_id=128000,
                                   eos_token_id=128012),
     dict(hidden_size=1536, intermediate_size=5504, drop_layers=[26, 27, 28, 29]), False),
    ("Gemma-2-9B", "gemma2", dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                                  num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
                                  query_pre_attn_scalar=256),
     dict(hidden_size=2688, intermediate_size=9216), False),
    ("Gemma-3-1B", "gemma3_text", dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                       num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                       vocab_size=262144, query_pre_attn_scalar=256, sliding_window=512),
     dict(hidden_size=864, intermediate_size=3456), False),
    ("Gemma-3-270M", "gemma3_text", dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                         num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                         vocab_size=262144, query_pre_attn_scalar=256, sliding_window=512),
     dict(hidden_size=480, intermediate_size=1024), True),
    ("Mixtral-8x7B", "mixtral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32000,
                                     num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6),
     dict(hidden_size=3072, intermediate_size=9216, num_local_experts=6), False),
    ("Qwen3-30B-A3B", "qwen3_moe", dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                                        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
                                        head_dim=128, vocab_size=151936, num_experts=128, num_experts_per_tok=8,
                                        norm_topk_prob=True, tie_word_embeddings=False),
     dict(hidden_size=1536, moe_intermediate_size=512, num_experts=96), False),
    # hybrid: 24 Mamba2, 4 attention, 24 MLP layers (the published hybrid_override_pattern and attention_head_dim)
    ("Nemotron-H-8B", "nemotron_h", dict(
        hybrid_override_pattern="M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-", hidden_size=4096,
        num_hidden_layers=52, num_attention_heads=32, num_key_value_heads=8, attention_head_dim=128, head_dim=128,
        intermediate_size=21504, mamba_num_heads=128, mamba_head_dim=64, n_groups=8, ssm_state_size=128,
        conv_kernel=4, vocab_size=131072, tie_word_embeddings=False, use_bias=False, use_conv_bias=True,
        mlp_bias=False, mlp_hidden_act="relu2"),
     dict(hidden_size=3072, intermediate_size=12288, mamba_num_heads=96), False),
]


def build(model_type: str, fields: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **fields)


def skeleton_numel(config) -> int:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # on the meta device from_config leaves a tied head untied
    return sum(p.numel() for p in model.parameters())  # a tied head is one parameter, counted once


def pruned_config(config, target: dict):
    from minitron_hf.pruning.importance import random_importance
    from minitron_hf.pruning.trim import PruneTarget, make_plan, resolve_target

    new, drop = resolve_target(config, PruneTarget.from_dict(target))
    if drop is None:
        drop = list(range(new["num_hidden_layers"], config.num_hidden_layers))  # not used by the examples
    from minitron_hf.arch import family_of

    width = any(new[k] != getattr(config, k) for k in family_of(config).prunable if k != "num_hidden_layers")
    plan = make_plan(config, random_importance(config) if width else None, new, drop)
    return type(config).from_dict(plan.new_config)


def counts() -> tuple[list[str], list[dict]]:
    from minitron_hf.arch import count_parameters

    rows, recs = [], []
    for name, model_type, fields, target, _ in SHAPES:
        config = build(model_type, fields)
        after = pruned_config(config, target)
        before_n, after_n = count_parameters(config), count_parameters(after)
        numel_before, numel_after = skeleton_numel(config), skeleton_numel(after)
        ok = before_n["total"] == numel_before and after_n["total"] == numel_after
        active = [n.get("active") for n in (before_n, after_n)]
        recs.append({"name": name, "model_type": model_type, "target": target, "before": before_n, "after": after_n,
                     "numel_before": numel_before, "numel_after": numel_after, "equal": ok})
        tgt = ", ".join(f"{k}={v}" for k, v in target.items())
        act = (f"{active[0] / 1e9:.2f}B -> {active[1] / 1e9:.2f}B" if active[0] is not None and
               active[0] != before_n["total"] else "= total")
        rows.append(f"| {name} | `{model_type}` | {tgt} | {before_n['total'] / 1e9:.3f}B -> "
                    f"{after_n['total'] / 1e9:.3f}B | {act} | {numel_before:,} / {numel_after:,} | "
                    f"{'equal' if ok else 'DIFFERENT'} |")
        print(rows[-1], flush=True)
    return rows, recs


def prune_part(work: Path) -> list[str]:
    from minitron_hf.default_model import ensure_default_model
    from sequential import make_checkpoint, prune

    tok = ensure_default_model()
    rows = []
    for name, model_type, fields, target, fits in SHAPES:
        if not fits:
            continue
        config = build(model_type, fields)
        src = work / name
        if src.exists():
            shutil.rmtree(src)
        size = make_checkpoint(src, config, tok)
        out = work / f"{name}-pruned"
        tgt = [f"{k}={v}" for k, v in target.items()]
        r = prune(["--model", str(src), "--output", str(out), "--overwrite", "--target", *tgt, "--calib-samples", "16",
                   "--seq-len", "128", "--batch-size", "4", "--sequential", "false"], work / f"{name}.log")
        rows.append(f"| {name} | {size / 2**30:.2f} GiB | {', '.join(tgt)} | {r['seconds']:.1f} s | "
                    f"{r['peak_gib']:.2f} GiB |")
        print(rows[-1], flush=True)
        shutil.rmtree(src)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prune", action="store_true", help="also prune the shapes that fit (random weights)")
    ap.add_argument("--work", default=None, help="folder for the random checkpoints (default: a temporary one)")
    args = ap.parse_args()
    rows, _ = counts()
    body = ["Each family at its published shape (config fields from the published config.json; random weights are "
            "never needed for counts: the skeleton is built on the meta device). The target is an example in the "
            "spirit of the Minitron papers (hidden x0.75, MLP about x0.5); for Llama-3.1-8B and Mistral-NeMo-12B "
            "it is the published Minitron shape. `count_parameters` is the family module's analytic count; the "
            "numel column is what transformers instantiates (before / after); `equal` = the two agree exactly.", "",
            "| model | family | target | parameters (total) | active | numel (before / after) | analytic vs numel |",
            "|---|---|---|---|---|---|---|", *rows]
    if args.prune:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="minitron-arch-"))
        work.mkdir(parents=True, exist_ok=True)
        body += ["", "## Pruning time and peak memory (shapes that fit; random bf16 weights)", "",
                 "`minitron prune` in a fresh process, importance on 16 x 128 tokens of python-docs, fp32, in memory "
                 "(`--sequential false`); peak RSS is the process's VmHWM.", "",
                 "| model | checkpoint | target | wall time | peak RSS |", "|---|---|---|---|---|", *prune_part(work)]
    path = write_result("architectures", "Architectures: parameters, analytic counts and pruning cost per family",
                        "\n".join(body))
    print(path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_grad_enabled(False)
    SimpleNamespace  # noqa: B018  (kept for readers: configs are plain transformers configs here)
    main()
