"""Validation loss right after pruning the embedded default model, for the pruning options.

One run, same calibration and validation tokens for every variant: importance vs random (the premise
of arXiv 2408.11796 Fig. 5), depth by LM loss vs block influence, head pruning with plain removal vs
the head-residual merge (arXiv 2407.14679 sec. 2.3), single-shot vs iterative. Lower is better; no
variant is distilled here, so absolute losses are high.

    python benchmarks/pruning_quality.py [--calib-samples 64 --val-samples 16 --seq-len 256]
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

from common import write_result
from minitron_hf.arch import count_parameters
from minitron_hf.data import DataConfig
from minitron_hf.loading import resolve_model
from minitron_hf.lm_loss import validation_loss
from minitron_hf.pruning.config import PruneConfig
from minitron_hf.pruning.prune import run_prune

WIDTH = {"hidden_size": 432, "intermediate_size": 768}
HEADS = {"num_attention_heads": 6, "num_key_value_heads": 3}
VARIANTS = [
    ("width, importance (l2_mean)", WIDTH, {}),
    ("width, random", WIDTH, {"importance": "random"}),
    ("width, importance, 3 iterative steps", WIDTH, {"iterative_steps": 3}),
    ("depth 30->15, lm-loss block", {"num_hidden_layers": 15}, {}),
    ("depth 30->15, block-influence block", {"num_hidden_layers": 15}, {"depth_metric": "block-influence"}),
    ("heads 9->6, plain removal", HEADS, {}),
    ("heads 9->6, merge pruned heads", HEADS, {"merge_pruned_heads": True}),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--val-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    src = resolve_model("smollm2-135m")
    data = DataConfig()
    kw = dict(samples=args.val_samples, seq_len=args.seq_len)
    rows = [("teacher (SmolLM2-135M-Instruct)", validation_loss(src, data, **kw), 0.0,
             count_parameters(__import__("transformers").AutoConfig.from_pretrained(src))["non_embedding"])]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, target, opts) in enumerate(VARIANTS):
            out = Path(tmp) / str(i)
            t = time.time()
            rec = run_prune(data, PruneConfig(model=str(src), output=str(out), target=target,
                                              calib_samples=args.calib_samples, seq_len=args.seq_len,
                                              val_samples=min(8, args.val_samples), **opts))
            rows.append((name, validation_loss(out, data, **kw), time.time() - t,
                         rec["parameters"]["after"]["non_embedding"]))
            print(rows[-1], flush=True)
    loss = {n: l for n, l, _, _ in rows}

    def cmp(a, b):
        return f"{a} {loss[a]:.2f} vs {b} {loss[b]:.2f}: {'the first is better' if loss[a] < loss[b] else 'the second is better'}"

    reading = "\n".join(f"- {cmp(a, b)}" for a, b in [
        ("width, importance (l2_mean)", "width, random"),
        ("width, importance (l2_mean)", "width, importance, 3 iterative steps"),
        ("depth 30->15, lm-loss block", "depth 30->15, block-influence block"),
        ("heads 9->6, plain removal", "heads 9->6, merge pruned heads"),
    ])
    table = "\n".join(f"| {n} | {p / 1e6:.1f}M | {l:.3f} | {math.exp(l):,.1f} | {s:.0f} |" for n, l, s, p in rows)
    body = f"""
Teacher SmolLM2-135M-Instruct, data `python-docs`; calibration {args.calib_samples} x {args.seq_len} tokens,
validation {args.val_samples} x {args.seq_len} tokens (held-out split), fp32, no distillation.
The depth scan uses {min(8, args.val_samples)} validation sequences to choose the block.

| variant | non-embedding params | validation loss | perplexity | prune seconds |
|---|---|---|---|---|
{table}

Reading (this run, before any distillation):
{reading}
"""
    print(body)
    print("wrote", write_result("pruning_quality", "Validation loss right after pruning (SmolLM2-135M)", body))


if __name__ == "__main__":
    main()
