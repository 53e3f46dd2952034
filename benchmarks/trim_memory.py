"""Time and peak memory of trimming a checkpoint: streaming (ours) against load-slice-save.

A synthetic Llama checkpoint (TinyLlama-1.1B shapes by default, bf16, untied LM head, random weights
written tensor by tensor) is pruned to a width target with random scores, so only the surgery is
measured. Each method runs in a fresh subprocess; peak memory is the child's peak RSS (VmHWM) minus
that of a child that only imports torch/transformers.

Target (issue 2): the streaming trimmer's peak stays near the largest tensor plus the output, not
twice the model.

    python benchmarks/trim_memory.py [--hidden 2048 --layers 22 ...]
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from common import run_json_child, write_result

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
import transformers
mode, src, out, target = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
t = time.perf_counter()
if mode != "baseline":
    from transformers import AutoConfig
    from minitron_hf.pruning.importance import random_importance
    from minitron_hf.pruning.trim import PruneTarget, make_plan, resolve_target, trim_checkpoint
    config = AutoConfig.from_pretrained(src)
    new, drop = resolve_target(config, PruneTarget.from_dict(target))
    plan = make_plan(config, random_importance(config), new, drop)
    out.mkdir()
    if mode == "streaming":
        trim_checkpoint(src, out, plan, progress=False)
    else:  # naive: whole model in memory, slice every parameter, save_pretrained
        from transformers import AutoModelForCausalLM
        from minitron_hf.pruning.trim import slice_tensor
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
        sd = dict(slice_tensor(k, v, plan) for k, v in model.state_dict().items()
                  if not k.startswith("model.layers.") or int(k.split(".")[2]) in plan.layers)
        new_model = AutoModelForCausalLM.from_config(type(config).from_dict(plan.new_config), dtype=torch.bfloat16)
        new_model.load_state_dict(sd)
        new_model.save_pretrained(out)
# VmHWM is this process's own peak RSS; ru_maxrss would carry the parent's peak across fork + exec
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"maxrss_mb": hwm / 1024, "seconds": time.perf_counter() - t}))
"""


def make_checkpoint(d: Path, hidden, inter, layers, heads, kv, vocab) -> dict:
    hd = hidden // heads
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=hidden, intermediate_size=inter,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
               vocab_size=vocab, tie_word_embeddings=False, torch_dtype="bfloat16", max_position_embeddings=2048)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg))
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (heads * hd, hidden), p + "self_attn.k_proj.weight": (kv * hd, hidden),
                       p + "self_attn.v_proj.weight": (kv * hd, hidden), p + "self_attn.o_proj.weight": (hidden, heads * hd),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    # several shards, written one at a time, like a real Hub checkpoint
    names, shard, shard_bytes, weight_map, n = list(shapes), {}, 0, {}, 0
    for k in names + [None]:
        if k is None or shard_bytes > 1 << 30:
            n += 1
            fname = f"model-{n:05d}.safetensors"
            save_file(shard, str(d / fname), metadata={"format": "pt"})
            weight_map.update({x: fname for x in shard})
            shard, shard_bytes = {}, 0
        if k is not None:
            shard[k] = torch.randn(shapes[k], dtype=torch.bfloat16) * 0.02
            shard_bytes += shard[k].numel() * 2
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    sizes = [torch.Size(s).numel() * 2 for s in shapes.values()]
    return {"model_mb": sum(sizes) / 2**20, "largest_tensor_mb": max(sizes) / 2**20}


def run_child(mode, src, out, target):
    return run_json_child(CHILD, mode, str(src), str(out), json.dumps(target))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    target = {"hidden_size": args.hidden * 3 // 4, "intermediate_size": args.intermediate // 2}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        info = make_checkpoint(tmp / "src", args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads, args.vocab)
        base = run_child("baseline", tmp / "src", tmp / "b", target)
        res = {}
        for mode in ("streaming", "naive"):
            res[mode] = run_child(mode, tmp / "src", tmp / mode, target)
            res[mode]["out_mb"] = sum(f.stat().st_size for f in (tmp / mode).glob("*.safetensors")) / 2**20
    rows = "\n".join(
        f"| {m} | {r['seconds']:.1f} | {r['maxrss_mb'] - base['maxrss_mb']:,.0f} | "
        f"{(r['maxrss_mb'] - base['maxrss_mb']) / info['model_mb']:.2f} |" for m, r in res.items())
    s = res["streaming"]
    peak = s["maxrss_mb"] - base["maxrss_mb"]
    bound = info["largest_tensor_mb"] + s["out_mb"]
    body = f"""
Synthetic Llama checkpoint: hidden {args.hidden}, MLP {args.intermediate}, {args.layers} layers, {args.heads}/{args.kv_heads}
heads, vocab {args.vocab}, bf16, untied, in 1 GiB shards: **{info['model_mb']:,.0f} MiB**; largest tensor
{info['largest_tensor_mb']:,.0f} MiB. Target {target} (output {s['out_mb']:,.0f} MiB). Peak = child peak RSS (VmHWM) minus
an import-only child ({base['maxrss_mb']:,.0f} MiB).

| method | seconds | peak extra memory (MiB) | peak / model size |
|---|---|---|---|
{rows}

Streaming peak {peak:,.0f} MiB = {peak / info['largest_tensor_mb']:.1f}x the largest tensor (the source tensor, its
slice and one intermediate), against the target bound largest tensor + output = {bound:,.0f} MiB and twice the
model = {2 * info['model_mb']:,.0f} MiB: {"within" if peak <= bound else "ABOVE"} the target. The output is never held
in memory: headers are computed from the plan and each tensor's bytes are written as soon as it is sliced.
"""
    print(body)
    print("wrote", write_result("trim_memory", "Trimming time and peak memory", body))


if __name__ == "__main__":
    main()
