"""The recipe at Llama-3.1-8B shape on one GPU, random weights: prune, serve-side throughput, distil, KD loss.

What the CPU test suite cannot show: that the code paths users run on a GPU (bf16 calibration,
streaming trim of a 16 GB checkpoint, the distillation step with an 8B teacher and a 4.5B student on
one device, the chunked KD loss at vocab 128,256) work at the real shapes, and what they cost.
Weights are random (no Llama weights can be fetched here), so losses mean nothing; times and memory
do. Each step runs in turn, records its result (or its error) and the next one still runs.

1. teacher: Llama-3.1-8B config (hidden 4096, MLP 14336, 32 layers, 32/8 heads, vocab 128,256),
   random bf16 weights, saved as a checkpoint with the SmolLM2 tokenizer (its ids are < 128,256).
2. `run_prune` to Llama-3.1-Minitron-4B-Width (hidden 3072, MLP 9216) and -Depth (16 layers, lm-loss
   metric) on python-docs calibration data, bf16, on the GPU.
3. `run_throughput` (transformers backend) teacher vs both students.
4. `run_distill` of the width student from the teacher: bf16 weights, AdamW, gradient checkpointing,
   sequence 4096; tokens/s and peak GPU memory.
5. KD loss at vocab 128,256, hidden 4096 (bf16): chunked vs naive peak memory and time.

    python benchmarks/gpu_llama8b.py --tokenizer DIR --workdir /tmp/w --out DIR [--shape tiny]
"""

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                tie_word_embeddings=False)
WIDTH_4B = {"hidden_size": 3072, "intermediate_size": 9216}
DEPTH_4B = {"num_hidden_layers": 16}
# a CPU-sized stand-in that takes the same code paths (to check this script before a GPU run)
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
            vocab_size=49152, max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)


def gib(x):
    return round(x / 2**30, 2)


def make_teacher(shape: dict, tokenizer: Path, dest: Path, device: str) -> dict:
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (dest / "config.json").exists():  # a warm machine keeps it from the last call
        return {"reused": str(dest)}
    cfg = LlamaConfig(**shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(dest, max_shard_size="5GB")
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, dest / f.name)
    n = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"parameters": n, "checkpoint_gib": gib(sum(f.stat().st_size for f in dest.glob("*.safetensors")))}


def prune(teacher: Path, dest: Path, target: dict, device: str, tiny: bool) -> dict:
    from minitron_hf.data import DataConfig
    from minitron_hf.pruning.config import PruneConfig
    from minitron_hf.pruning.prune import run_prune

    if (dest / "config.json").exists():  # a warm machine keeps it from the last call
        return {"reused": str(dest)}
    seq = 256 if tiny else 2048
    res = run_prune(DataConfig(), PruneConfig(model=str(teacher), output=str(dest), target=target,
                                              calib_samples=8 if tiny else 48, val_samples=4 if tiny else 16,
                                              seq_len=seq, batch_size=4, dtype="bfloat16", device=device))
    return res


def throughput(models, names, out: Path, tiny: bool) -> dict:
    from minitron_hf.export.throughput import ThroughputConfig, results_table, run_throughput

    cfg = ThroughputConfig(backend="transformers", batch_size=4 if tiny else 32,
                           lengths=["32/16"] if tiny else ["128/128", "1024/128"],
                           num_requests=4 if tiny else 64, warmup_requests=2, output=str(out / "throughput"))
    res = run_throughput([str(m) for m in models], cfg, names=names)
    return {"table": results_table(res["rows"]), "rows": res["rows"], "config": res["config"]}


def distill(student: Path, teacher: Path, dest: Path, tiny: bool) -> dict:
    from minitron_hf.data import DataConfig
    from minitron_hf.distill.run import DistillScriptConfig, run_distill
    from minitron_hf.distill.trainer import DistillationConfig

    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    args = DistillationConfig(output_dir=str(dest), max_steps=2 if tiny else 8, per_device_train_batch_size=1,
                              gradient_accumulation_steps=4, gradient_checkpointing=True,
                              bf16=True, learning_rate=1e-4, warmup_steps=0, logging_steps=1,
                              eval_strategy="no", save_strategy="no", report_to="none", seed=0)
    res = run_distill(DataConfig(), DistillScriptConfig(student=str(student), teacher=str(teacher),
                                                        seq_len=256 if tiny else 4096, eval_samples=2,
                                                        model_dtype="bfloat16"), args)
    return res


def kd_loss(tiny: bool, chunks=(130, 512, 1024, None, 4096)) -> list[dict]:
    """Peak memory above the inputs and median step time (forward + backward) per method and chunk size."""
    from minitron_hf.distill.losses import auto_chunk_size, chunked_kd_loss, naive_kd_loss

    if not torch.cuda.is_available():
        return []
    d, v = (256, 49152) if tiny else (4096, 128256)
    rows = []
    for n in ([512] if tiny else [4096, 8192, 16384]):
        for chunk in ("naive", *chunks):
            row = {"tokens": n, "vocab": v, "hidden": d,
                   "method": "naive" if chunk == "naive" else "chunked",
                   "chunk": None if chunk == "naive" else (chunk or auto_chunk_size(v, device="cuda"))}
            g = torch.Generator(device="cuda").manual_seed(0)
            kw = dict(device="cuda", dtype=torch.bfloat16, generator=g)
            hs = torch.randn(n, d, **kw).requires_grad_()
            ws = (torch.randn(v, d, **kw) * 0.02).requires_grad_()
            ht, wt = torch.randn(n, d, **kw), torch.randn(v, d, **kw) * 0.02
            labels = torch.randint(0, v, (n,), device="cuda", generator=g)

            def step():
                if chunk == "naive":
                    loss = naive_kd_loss(hs @ ws.T, ht @ wt.T, labels)
                else:
                    loss = chunked_kd_loss(hs, ws, ht, wt, labels, chunk_size=row["chunk"])
                loss.backward()
                hs.grad = ws.grad = None

            try:
                step()
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    step()
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
                row["peak_gib"] = gib(torch.cuda.max_memory_allocated() - base)
                row["ms"] = round(sorted(times)[1] * 1e3, 1)
            except torch.OutOfMemoryError:
                row["peak_gib"] = "OOM"
            hs = ws = ht = wt = None  # free them before the next size (step's closure sees the same names)
            torch.cuda.empty_cache()
            rows.append(row)
    return rows


def fsdp(student: Path, teacher: Path, dest: Path, tiny: bool) -> dict:
    """The same distillation under `accelerate launch` with recipes/accelerate/fsdp2.yaml on this one GPU:
    the sharded-LM-head path (full logits) and FSDP2 wrapping of both models."""
    import subprocess

    root = Path(__file__).parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "recipes/accelerate/fsdp2.yaml"), "--num_processes", "1", str(root / "recipes/distill.py"),
           "--student", str(student), "--teacher", str(teacher), "--output-dir", str(dest), "--max-steps", "4",
           "--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "2",
           "--seq-len", "256" if tiny else "4096", "--eval-samples", "2", "--model-dtype", "bfloat16", "--bf16",
           "--gradient-checkpointing", "--save-strategy", "no", "--report-to", "none", "--eval-strategy", "no",
           "--logging-steps", "1", "--learning-rate", "1e-4"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ,
                                                                 "PYTHONPATH": str(root)})
    (dest.parent / "fsdp.log").write_text(r.stdout + "\n" + r.stderr)
    if r.returncode != 0:  # the child's own traceback, not the launcher's
        lines = r.stderr.splitlines()
        first = next((i for i, x in enumerate(lines) if x.startswith(("Traceback", "[rank0]: Traceback"))), 0)
        raise RuntimeError(f"exit {r.returncode}: " + "\n".join(lines[first:first + 60]))
    res = json.loads((dest / "distill.json").read_text())
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(dest / "final")  # a vanilla checkpoint, not FSDP shards
    res["final_parameters"] = sum(p.numel() for p in final.parameters())
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="directory with the SmolLM2 tokenizer files")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True, help="results: gpu_llama8b.json/.md, curves and throughput plots")
    ap.add_argument("--shape", choices=("llama-3.1-8b", "tiny"), default="llama-3.1-8b")
    ap.add_argument("--steps", nargs="+", default=["teacher", "width", "depth", "throughput", "distill", "kd"])
    args = ap.parse_args()
    tiny = args.shape == "tiny"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work, out = Path(args.workdir), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    results = {"shape": args.shape, "torch": torch.__version__, "transformers": transformers.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "steps": {}}
    t_dir, w_dir, d_dir = work / "teacher", work / "width", work / "depth"
    jobs = {
        "teacher": lambda: make_teacher(TINY if tiny else LLAMA_8B, Path(args.tokenizer), t_dir, device),
        "width": lambda: prune(t_dir, w_dir, WIDTH_4B if not tiny else {"hidden_size": 128, "intermediate_size": 256},
                               device, tiny),
        "depth": lambda: prune(t_dir, d_dir, DEPTH_4B if not tiny else {"num_hidden_layers": 2}, device, tiny),
        "throughput": lambda: throughput([t_dir, w_dir, d_dir], ["teacher (8B shape)", "4B-width", "4B-depth"],
                                         work, tiny),
        "distill": lambda: distill(w_dir, t_dir, work / "distill", tiny),
        "kd": lambda: kd_loss(tiny),
        "fsdp": lambda: fsdp(w_dir, t_dir, work / "fsdp", tiny),
    }
    for name in args.steps:
        t0 = time.time()
        print(f"=== {name}", flush=True)
        try:
            res = jobs[name]()
            results["steps"][name] = {"ok": True, "seconds": round(time.time() - t0, 1), "result": res}
        except Exception as e:  # record and go on: the later steps are independent measurements
            traceback.print_exc()
            results["steps"][name] = {"ok": False, "seconds": round(time.time() - t0, 1),
                                      "error": f"{type(e).__name__}: {e}"[:2000]}
        if torch.cuda.is_available():
            results["steps"][name]["peak_gpu_gib"] = gib(torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        print(json.dumps({k: v for k, v in results["steps"][name].items() if k != "result"}), flush=True)
        report(results, work, out, args.shape)  # after every step: a run cut short still leaves its results


def report(results: dict, work: Path, out: Path, shape: str) -> None:
    (out / "gpu_llama8b.json").write_text(json.dumps(results, indent=1, default=str))
    for src, name in ((work / "throughput" / "throughput.png", "gpu_throughput.png"), (work / "fsdp.log", "fsdp.log"),
                      (work / "distill" / "curves.png", "gpu_distill_curves.png")):
        if src.exists():
            shutil.copy(src, out / name)
    s = results["steps"]
    lines = [f"Shape {shape}; GPU {results['gpu']}; torch {results['torch']}, transformers "
             f"{results['transformers']}. Random weights: losses are meaningless, times and memory are not.", ""]
    for name, r in s.items():
        lines.append(f"- {name}: {'ok' if r['ok'] else 'FAILED: ' + r['error']}, {r['seconds']} s, peak GPU "
                     f"{r.get('peak_gpu_gib', '-')} GiB")
    if s.get("throughput", {}).get("ok"):
        lines += ["", s["throughput"]["result"]["table"]]
    if s.get("distill", {}).get("ok"):
        d = s["distill"]["result"]
        lines += ["", f"Distillation: {d['steps']} steps x {d['tokens_per_step']} tokens, "
                  f"{d['train_tokens_per_s']:.0f} tokens/s, peak GPU memory {d['peak_gpu_memory_gib']} GiB."]
    if s.get("fsdp", {}).get("ok"):
        d = s["fsdp"]["result"]
        lines += ["", f"FSDP2 (accelerate launch, recipes/accelerate/fsdp2.yaml, 1 process, full-logits KD): "
                  f"{d['steps']} steps x {d['tokens_per_step']} tokens, {d['train_tokens_per_s']:.0f} tokens/s, "
                  f"peak GPU memory {d['peak_gpu_memory_gib']} GiB, KD {d['before']['before_kd_loss']:.3f} -> "
                  f"{d['after']['eval_kd_loss']:.3f}; final/ loads with from_pretrained "
                  f"({d['final_parameters'] / 1e9:.2f}B parameters)."]
    if s.get("kd", {}).get("ok") and s["kd"]["result"]:
        lines += ["", "KD loss (forward KL), vocab 128,256, hidden 4096, bf16, forward + backward; peak = memory "
                  "above the inputs:", "", "| tokens | method | chunk | peak GiB | ms |", "|---|---|---|---|---|"]
        for r in s["kd"]["result"]:
            lines.append(f"| {r['tokens']} | {r['method']} | {r['chunk'] or '-'} | {r.get('peak_gib')} | "
                         f"{r.get('ms', '-')} |")
    write_result("gpu_llama8b", "Llama-3.1-8B shape on one GPU: prune, throughput, distil", "\n".join(lines), out)


if __name__ == "__main__":
    main()
