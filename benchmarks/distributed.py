"""Issue 18: KD step time and peak memory per process under DDP and FSDP2 on CPU processes, and the chunked KD loss
against full logits under FSDP2 at growing sequence lengths.

The pair is the demo's: SmolLM2-135M (teacher) and its width-pruned student (hidden 576 -> 432, MLP 1536 -> 768,
made here with `minitron prune` when absent). Every configuration is one `accelerate launch` of this file in worker
mode, which builds the `DistillationTrainer` through the library (python-docs train blocks) and measures:

- step time: the median wall time of the training steps after the first (a callback around each step);
- peak memory: each process's peak RSS during `train()` (the kernel's high-water mark, VmHWM, reset at the start of
  training through /proc/self/clear_refs, so loading the models does not count).

1. seq 256, global batch 4: 1 process x 4, 2 processes x 2 with DDP, 2 processes x 2 with FSDP2
   (recipes/accelerate/fsdp2-cpu.yaml, both models sharded); 6 steps.
2. FSDP2 on 2 processes, 1 sequence per process, seq 256 / 1024 / 4096, vocab 49,152: chunked KD loss (default
   chunk) against full [tokens x vocab] logits (kd_chunk_size=0); 3 steps.

    .venv/bin/python benchmarks/distributed.py [--reuse]

Writes benchmarks/results/distributed.md and distributed.json. Run it alone: it uses both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
WORK = ROOT / "runs" / "distributed_bench"


def _vm(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("nan")


def worker(a) -> None:
    import torch
    from transformers import TrainerCallback

    from minitron_hf.data import BlockDataset, DataConfig, collate_blocks, load_blocks
    from minitron_hf.distill.trainer import DistillationConfig, DistillationTrainer
    from minitron_hf.loading import load_model, load_tokenizer

    class Probe(TrainerCallback):
        def __init__(self):
            self.t, self.steps, self.hwm = None, [], None

        def on_train_begin(self, args, state, control, **kw):
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS: loading does not count
            except OSError:
                pass

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.steps.append(time.perf_counter() - self.t)

        def on_train_end(self, args, state, control, **kw):
            self.hwm = _vm("VmHWM")

    tok = load_tokenizer(a.teacher)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n = a.per_device * world * a.steps
    blocks = load_blocks(DataConfig(data="python-docs"), tok, "train", a.seq_len, n)
    args = DistillationConfig(output_dir=str(a.out), per_device_train_batch_size=a.per_device, max_steps=a.steps,
                              learning_rate=1e-4, logging_steps=1, report_to="none", save_strategy="no",
                              disable_tqdm=True, kd_chunk_size=a.kd_chunk_size, seed=0)
    trainer = DistillationTrainer(model=load_model(a.student).train(), teacher_model=load_model(a.teacher), args=args,
                                  train_dataset=BlockDataset(blocks), data_collator=collate_blocks,
                                  tokenizer_size=len(tok))
    probe = Probe()
    trainer.add_callback(probe)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    rec = {"rank": trainer.args.process_index, "world": world, "fsdp2": bool(trainer.accelerator.is_fsdp2),
           "full_logits": trainer._full_logits(), "step_s": statistics.median(probe.steps[1:] or probe.steps),
           "steps_s": probe.steps, "peak_rss_gib": probe.hwm, "losses": losses,
           "threads": torch.get_num_threads()}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"rank{rec['rank']}.json").write_text(json.dumps(rec))


def ensure_student(teacher: Path) -> Path:
    out = WORK / "student"
    if (out / "model.safetensors").exists():
        return out
    cmd = [sys.executable, "-m", "minitron_hf.cli", "prune", "--model", str(teacher), "--output", str(out),
           "--target", "hidden_size=432", "--target", "intermediate_size=768", "--calib-samples", "64",
           "--seq-len", "256", "--batch-size", "8"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out


REUSE = False  # --reuse: keep the measured rows found in runs/distributed_bench (run only the missing ones)


def launch(name: str, launch_args: list[str], student: Path, teacher: Path, seq_len: int, per_device: int,
           steps: int, chunk: int | None, threads: int = 1) -> dict:
    out = WORK / name
    if REUSE and (out / "rank0.json").exists():
        wall = float((out / "wall_s").read_text()) if (out / "wall_s").exists() else None
        return _record(name, out, seq_len, per_device, threads, wall)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", *launch_args, __file__, "--worker",
           "--student", str(student), "--teacher", str(teacher), "--seq-len", str(seq_len), "--per-device",
           str(per_device), "--steps", str(steps), "--out", str(out)]
    if chunk is not None:
        cmd += ["--kd-chunk-size", str(chunk)]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-4000:]}")
    (out / "wall_s").write_text(f"{time.time() - t0:.1f}")
    rec = _record(name, out, seq_len, per_device, threads, round(time.time() - t0, 1))
    print(json.dumps(rec), flush=True)
    return rec


def _record(name, out, seq_len, per_device, threads, wall_s) -> dict:
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return {"name": name, "seq_len": seq_len, "per_device": per_device, "processes": len(ranks), "threads": threads,
            "fsdp2": ranks[0]["fsdp2"], "full_logits": ranks[0]["full_logits"],
            "step_s": max(x["step_s"] for x in ranks), "peak_rss_gib": [round(x["peak_rss_gib"], 2) for x in ranks],
            "losses": ranks[0]["losses"], "wall_s": wall_s}


def main() -> None:
    from common import write_result

    from minitron_hf.default_model import ensure_default_model

    teacher = ensure_default_model()
    student = ensure_student(teacher)
    one = ["--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    ddp = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no"]
    fsdp2 = ["--config_file", str(ROOT / "recipes/accelerate/fsdp2-cpu.yaml")]
    part1 = [launch("1proc", one, student, teacher, 256, 4, 6, None),
             launch("1proc-2threads", one, student, teacher, 256, 4, 6, None, threads=2),
             launch("ddp", ddp, student, teacher, 256, 2, 6, None),
             launch("fsdp2", fsdp2, student, teacher, 256, 2, 6, None)]
    part2 = []
    for seq in (256, 1024, 4096):
        for chunk in (None, 0):
            part2.append(launch(f"fsdp2-{seq}-{'full' if chunk == 0 else 'chunked'}", fsdp2, student, teacher, seq,
                                1, 3, chunk))
    (ROOT / "benchmarks" / "results" / "distributed.json").write_text(json.dumps({"steps": part1, "seq": part2},
                                                                                 indent=1))
    rows1 = "\n".join(
        f"| {r['name']} | {r['processes']} x {r['per_device']} | {r['threads']} | {r['step_s']:.2f} | "
        f"{' / '.join(f'{x:.2f}' for x in r['peak_rss_gib'])} | {', '.join(f'{x:.4f}' for x in r['losses'])} |"
        for r in part1)
    rows2 = "\n".join(
        f"| {r['seq_len']} | {'full logits' if r['full_logits'] else 'chunked'} | {r['step_s']:.2f} | "
        f"{' / '.join(f'{x:.2f}' for x in r['peak_rss_gib'])} |" for r in part2)
    by = {(r["seq_len"], r["full_logits"]): max(r["peak_rss_gib"]) for r in part2}
    extra = ", ".join(f"{seq}: {by[(seq, True)] - by[(seq, False)]:+.2f} GiB" for seq in (256, 1024, 4096))
    growth = ", ".join(f"{by[(seq, False)]:.2f}" for seq in (256, 1024, 4096))
    body = f"""
Pair: SmolLM2-135M teacher, its width-pruned student (hidden 432, MLP 768), fp32, python-docs blocks. Step time:
median wall time of a training step after the first (slowest process). Peak RSS: per process, its high-water mark
during `train()` only (reset at the start of training; loading the models does not count). Processes are CPU
processes over gloo started by `accelerate launch` (torchrun), one thread each (OMP_NUM_THREADS=1) unless the
table says otherwise, on 2 cores: 2 processes use both cores, like the 1-process run with 2 threads. With
`--reuse`, rows already measured in runs/distributed_bench (by an earlier run of this script) are kept and only
the missing ones run.

## KD step at the same global batch (4 x 256 tokens, 6 steps)

| run | processes x per-device batch | threads per process | step (s) | peak RSS per process (GiB) | train KD loss per step |
|---|---|---|---|---|---|
{rows1}

## Chunked KD loss against full logits under FSDP2 (2 processes x 1 sequence, vocab 49,152, 3 steps)

| sequence length | KD loss | step (s) | peak RSS per process (GiB) |
|---|---|---|---|
{rows2}

What full logits add to the larger process's peak, by sequence length: {extra}; that is the [tokens x 49,152]
fp32 logits of both models (0.8 GB each at 4096) and their softmax and gradient copies. The chunked loss holds one
[chunk x vocab] block at a time (the CPU default: about 16M logits, 64 MB), so what it adds does not grow with the
sequence; the chunked runs' own growth ({growth} GiB) is the two models' activations for a longer sequence
(no gradient checkpointing here), the same in both columns.
"""
    print(write_result("distributed", "Distributed distillation on CPU processes: DDP, FSDP2, chunked KD loss", body))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--student")
    p.add_argument("--teacher")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--per-device", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--kd-chunk-size", type=int, default=None)
    p.add_argument("--out")
    p.add_argument("--reuse", action="store_true", help="keep rows already measured in runs/distributed_bench")
    a = p.parse_args()
    REUSE = a.reuse
    worker(a) if a.worker else main()
