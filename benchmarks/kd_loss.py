"""KD loss memory and speed: the chunked loss against the naive full-logit loss.

Each (method, tokens, vocab) runs in a fresh subprocess: forward + backward of forward-KL from
random student/teacher hidden states (hidden 576, fp32) through LM-head weights, as in a training
step's loss. Peak memory is the process's VmHWM minus its VmRSS just before the step; time is the
median of 3 steps after a warm-up. Targets (issue 3): peak-memory ratio >= 8x at the largest shape,
step time <= 1.1x the naive one.

    python benchmarks/kd_loss.py [--tokens 1024 2048 4096 --vocab 49152 128256]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import write_result

CHILD = r"""
import json, statistics, sys, time
import torch
sys.path.insert(0, sys.argv[5])
from minitron_hf.distill.losses import chunked_kd_loss, naive_kd_loss
method, n, v, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rss(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
g = torch.Generator().manual_seed(0)
hs = torch.randn(n, d, generator=g).requires_grad_()
ws = (torch.randn(v, d, generator=g) * 0.05).requires_grad_()
ht, wt = torch.randn(n, d, generator=g), torch.randn(v, d, generator=g) * 0.05
labels = torch.randint(0, v, (n,), generator=g)
def step():
    if method == "naive":
        loss = naive_kd_loss(hs @ ws.T, ht @ wt.T, labels)
    else:
        loss = chunked_kd_loss(hs, ws, ht, wt, labels)
    loss.backward()
    hs.grad = ws.grad = None
    return loss.item()
step()  # warm-up: allocator caches, then measure the peak of later steps above this baseline
base = rss("VmRSS")
times = []
for _ in range(3):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(json.dumps({"peak_mb": rss("VmHWM") - base, "seconds": statistics.median(times)}))
"""


def run(method, n, v, d):
    r = subprocess.run([sys.executable, "-c", CHILD, method, str(n), str(v), str(d), str(Path(__file__).parents[1])],
                       capture_output=True, text=True, timeout=3000)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--hidden", type=int, default=576)
    args = ap.parse_args()
    rows = []
    for v in args.vocab:
        for n in args.tokens:
            res = {m: run(m, n, v, args.hidden) for m in ("naive", "chunked")}
            rows.append((v, n, res))
            print(v, n, res, flush=True)
    lines = []
    for v, n, r in rows:
        a, b = r["naive"], r["chunked"]
        if "error" in a or "error" in b:
            lines.append(f"| {v:,} | {n:,} | {a.get('peak_mb', a.get('error'))} | {b.get('peak_mb', b.get('error'))} | | | | |")
            continue
        lines.append(f"| {v:,} | {n:,} | {a['peak_mb']:,.0f} | {b['peak_mb']:,.0f} | {a['peak_mb'] / max(b['peak_mb'], 1):.1f}x "
                     f"| {a['seconds']:.2f} | {b['seconds']:.2f} | {b['seconds'] / a['seconds']:.2f} |")
    v, n, r = rows[-1]
    ok = "error" not in r["naive"] and "error" not in r["chunked"]
    verdict = (f"At the largest shape ({n:,} tokens x {v:,} vocab) the chunked loss uses "
               f"{r['naive']['peak_mb'] / max(r['chunked']['peak_mb'], 1):.1f}x less peak memory (target >= 8x) at "
               f"{r['chunked']['seconds'] / r['naive']['seconds']:.2f}x the naive step time (target <= 1.1x).") if ok else ""
    body = f"""
Forward-KL loss + backward (grads for student hidden states and LM-head weight), hidden {args.hidden}, fp32,
default chunk size (about 16M logits per chunk: 341 tokens at vocab 49152, 130 at 128256). Peak = extra memory of the step above the process's resident set before it.
8192 x 128256 does not fit the naive loss in this machine's 24 GiB (each fp32 logit tensor is 4 GiB and
the naive step holds several), so the largest shape here is {args.tokens[-1]:,} tokens.

| vocab | tokens | naive peak MiB | chunked peak MiB | memory ratio | naive s | chunked s | time ratio |
|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

{verdict}
"""
    print(body)
    print("wrote", write_result("kd_loss", "Chunked vs naive KD loss: memory and speed", body))


if __name__ == "__main__":
    main()
