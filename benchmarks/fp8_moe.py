"""FP8 export of a mixture of experts: time, peak memory, and what every-token calibration buys.

`minitron export fp8` quantizes a MoE's experts by unstacking each layer's experts into per-expert ``nn.Linear``
modules (``MoEDecoder.unstack_experts``) and calibrating every expert on every token, as NVIDIA ModelOpt does. This
measures, on a random Qwen3-MoE-like model (many small experts, top-8 routing):

- wall time and peak memory of ``minitron export fp8`` in a fresh process (peak RSS, VmHWM, minus that of a process
  that only imports torch, transformers and modelopt), against the peak of only loading the model the same way
  (float32: CPU calibration runs in float32): unstacking copies one layer's experts at a time, so it should add
  about one layer's experts, not a model copy;
- how many (layer, expert) pairs the router sends no calibration token at all, and how many fewer than 16: without
  every-token calibration those experts would get no measured input range (ModelOpt then fills in a fallback);
- that every expert projection of the output has its own weight and input scale.

    python benchmarks/fp8_moe.py [--experts 64 --top-k 8 --layers 8 --hidden 512 --expert-width 256]

Writes ``benchmarks/results/fp8_moe.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_json_child, write_result  # noqa: E402

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch, transformers, modelopt.torch.quantization
mode = sys.argv[1]
t = time.perf_counter()
if mode == "export":
    from minitron_hf.cli import main
    rc = main(["export", "fp8", sys.argv[2], "--output", sys.argv[3], "--calib-samples", sys.argv[4],
               "--seq-len", sys.argv[5], "--batch-size", sys.argv[6], "--dtype", "bfloat16"])
    assert rc == 0, rc
elif mode == "load":  # what export fp8 starts with on CPU: the model loaded in float32
    from minitron_hf.loading import load_model
    load_model(sys.argv[2], dtype=torch.float32, device="cpu")
wall = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print(json.dumps({"wall_s": wall, "peak_kib": hwm}))
"""


def child(*args: str) -> dict:
    return run_json_child(CHILD, *args)


def routing_counts(model, blocks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[layers, experts]: calibration tokens the router sends to each expert (top-k), by plain hooks."""
    L, E = model.config.num_hidden_layers, model.config.num_experts
    counts = torch.zeros(L, E, dtype=torch.long)

    def hook(i):
        def f(module, args, kwargs):
            index = kwargs.get("top_k_index", args[1] if len(args) > 1 else None)
            counts[i] += torch.bincount(index.reshape(-1), minlength=E)[:E]
        return f

    handles = [layer.mlp.experts.register_forward_pre_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            model(blocks[i:i + batch_size])
    for h in handles:
        h.remove()
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--expert-width", type=int, default=256)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--work", default=None)
    a = p.parse_args()

    from safetensors import safe_open

    from minitron_hf.data import DataConfig, load_blocks
    from minitron_hf.default_model import ensure_default_model
    from minitron_hf.loading import load_tokenizer
    from minitron_hf.pruning.trim import copy_aux_files
    from minitron_hf.tiny import tiny_model

    work = Path(a.work or tempfile.mkdtemp(prefix="fp8-moe-"))
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "src", work / "fp8"
    model = tiny_model("qwen3_moe", vocab_size=49152, hidden_size=a.hidden, moe_intermediate_size=a.expert_width,
                       intermediate_size=4 * a.expert_width, num_experts=a.experts, num_experts_per_tok=a.top_k,
                       num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=a.hidden // 8)
    n_params = sum(t.numel() for t in model.parameters())
    expert_params = sum(t.numel() for n, t in model.named_parameters() if ".experts." in n)
    model.to(torch.bfloat16).save_pretrained(src)
    default_dir = ensure_default_model()
    copy_aux_files(default_dir, src)

    tokenizer = load_tokenizer(src)
    blocks = load_blocks(DataConfig(), tokenizer, "calibration", a.seq_len, a.calib_samples)
    counts = routing_counts(model.float(), blocks, a.batch_size)
    del model

    base = child("baseline")
    run = child("export", str(src), str(out), str(a.calib_samples), str(a.seq_len), str(a.batch_size))
    load = child("load", str(src))
    peak_gib = (run["peak_kib"] - base["peak_kib"]) / 2**20
    load_gib = (load["peak_kib"] - base["peak_kib"]) / 2**20
    fp32_gib = n_params * 4 / 2**30
    layer_experts_gib = expert_params / a.layers * 4 / 2**30

    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        fp8 = sum(1 for k in keys if f.get_slice(k).get_dtype() == "F8_E4M3")
    experts_scaled = sum(1 for k in keys if ".experts." in k and k.endswith(".input_scale"))
    want = a.layers * a.experts * 3
    rec = json.loads((out / "fp8.json").read_text())
    tokens = a.calib_samples * a.seq_len
    pairs = a.layers * a.experts
    zero, few = int((counts == 0).sum()), int((counts < 16).sum())

    body = f"""
Model: random Qwen3-MoE-like, {a.layers} layers, hidden {a.hidden}, {a.experts} experts of width {a.expert_width},
top-{a.top_k} routing, vocabulary 49152: {n_params / 1e6:.1f}M parameters ({expert_params / 1e6:.1f}M in experts),
saved in bf16. Calibration: {a.calib_samples} x {a.seq_len} = {tokens} tokens of python-docs (`--calib-samples
{a.calib_samples} --seq-len {a.seq_len} --batch-size {a.batch_size}`).

| measure | value |
|---|---|
| `minitron export fp8` wall time (fresh process) | {run['wall_s']:.1f} s |
| its peak RSS above a process importing torch, transformers, modelopt | {peak_gib:.2f} GiB |
| peak RSS of loading the model alone (`load_model`, float32), same baseline | {load_gib:.2f} GiB |
| the model in float32 (what CPU calibration holds) | {fp32_gib:.2f} GiB |
| one layer's experts in float32 (what unstacking copies at a time) | {layer_experts_gib:.3f} GiB |
| quantized linears (fp8.json) | {rec['quantized_linears']} (= {a.layers} x (4 attention + {a.experts} x 3)) |
| FP8 tensors in the output | {fp8} |
| expert projections with their own input scale | {experts_scaled} of {want} |
| (layer, expert) pairs the router sent no calibration token | {zero} of {pairs} |
| pairs sent fewer than 16 tokens | {few} of {pairs} |

The export's peak is {peak_gib - load_gib:+.2f} GiB from loading's: the peak is set by loading the bf16 checkpoint
into float32 (transformers' loader: about twice the float32 model here; not broken down further), and unstacking
(one layer's experts at a time) plus calibration add about one layer's experts to it.

Every expert gets a measured input range because calibration runs every expert on every token (as ModelOpt's own
MoE calibration does). A random router spreads tokens nearly evenly, so the routing rows above say little about a
trained router, whose load is skewed; they count what routed-only calibration would have seen here.
"""
    path = write_result("fp8_moe", "FP8 export of a mixture of experts", body)
    print(path.read_text())


if __name__ == "__main__":
    main()
