"""Importance estimation throughput against a plain forward pass over the same calibration tokens.

Target (issue 2): >= 0.95x the plain forward. Calibration skips the LM head, which pays for the hooks.
Runs alternate (forward, importance, forward, ...) in one process so machine noise hits both alike.

    python benchmarks/importance_throughput.py [--samples 32 --seq-len 256 --repeats 3]
"""

import argparse
import statistics
import time

import torch

from common import write_result
from minitron_hf.data import DataConfig, load_blocks
from minitron_hf.loading import load_model, load_tokenizer
from minitron_hf.pruning.importance import estimate_importance


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model = load_model(args.model)
    blocks = load_blocks(DataConfig(), load_tokenizer(args.model), "calibration", args.seq_len, args.samples)
    n_tok = blocks.numel()

    @torch.no_grad()
    def plain():
        for i in range(0, len(blocks), args.batch_size):
            model(input_ids=blocks[i:i + args.batch_size], use_cache=False)

    def importance():
        estimate_importance(model, blocks, "l2_mean", batch_size=args.batch_size, progress=False)

    def lm_head_only():  # what skipping the LM head saves, for the record
        with torch.no_grad():
            h = torch.randn(args.batch_size, args.seq_len, model.config.hidden_size)
            for _ in range(0, len(blocks), args.batch_size):
                model.lm_head(h)

    plain()  # warm-up
    times = {"plain forward (with LM head)": [], "importance (hooks, no LM head)": [], "LM head alone": []}
    for _ in range(args.repeats):
        for name, fn in zip(times, (plain, importance, lm_head_only)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["plain forward (with LM head)"]
    rows = "\n".join(f"| {k} | {n_tok / v:,.0f} | {v:.2f} | {base / v:.3f} |" for k, v in med.items())
    ratio = base / med["importance (hooks, no LM head)"]
    body = f"""
Model `{args.model}`, {args.samples} calibration sequences x {args.seq_len} tokens ({n_tok:,} tokens),
batch {args.batch_size}, fp32, median of {args.repeats} alternating repeats.

| pass | tokens/s | seconds | throughput vs plain forward |
|---|---|---|---|
{rows}

Importance estimation runs at **{ratio:.2f}x** the plain forward's throughput (target >= 0.95x):
{"met" if ratio >= 0.95 else "NOT met"}.
"""
    print(body)
    print("wrote", write_result("importance_throughput", "Importance estimation throughput", body))


if __name__ == "__main__":
    main()
