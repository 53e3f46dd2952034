"""Generation throughput: the embedded default teacher vs its width- and depth-pruned students.

The paper's runtime comparison (Llama-3.1-8B vs 4B-Width / 4B-Depth, TensorRT-LLM FP8 on one H100:
1.8x / 2.7x) at laptop scale: SmolLM2-135M-Instruct against the two pruning recipes of
recipes/configs/smollm2-135m (hidden 432 + MLP 768, and 15 of 30 layers), on identical synthetic
requests, with vanilla transformers `generate` (or vLLM: --backend vllm). Writes
benchmarks/results/throughput.md. On a GPU with TensorRT-LLM use `minitron export trtllm` instead.

    python benchmarks/throughput.py [--backend transformers|vllm] [--batch-size 8] [--num-requests 32]
"""

import argparse
import datetime
import platform
import sys
import tempfile
from pathlib import Path

from minitron_hf.data import DataConfig
from minitron_hf.export.throughput import ThroughputConfig, results_table, run_throughput
from minitron_hf.models import ensure_default_model
from minitron_hf.pruning.prune import PruneConfig, run_prune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="transformers", choices=("transformers", "vllm"))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.md"))
    args = ap.parse_args()

    teacher = ensure_default_model()
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(model=str(teacher), calib_samples=16, seq_len=128)
        width, depth = Path(tmp) / "width", Path(tmp) / "depth"
        run_prune(DataConfig(), PruneConfig(output=str(width), target={"hidden_size": 432, "intermediate_size": 768},
                                            **common))
        run_prune(DataConfig(), PruneConfig(output=str(depth), target={"num_hidden_layers": 15}, val_samples=8,
                                            **common))
        cfg = ThroughputConfig(backend=args.backend, batch_size=args.batch_size, input_len=args.input_len,
                               output_len=args.output_len, num_requests=args.num_requests)
        res = run_throughput([str(teacher), str(width), str(depth)], cfg)
    for r, name in zip(res["rows"], ("teacher (SmolLM2-135M)", "width-pruned", "depth-pruned")):
        r["model"] = name
    text = (f"# Generation throughput: teacher vs pruned students\n\n"
            f"Date: {datetime.date.today()}; machine: {platform.machine()} {platform.processor() or ''}, "
            f"Python {platform.python_version()}.\nCommand: `python benchmarks/throughput.py {' '.join(sys.argv[1:])}`\n\n"
            f"{args.backend}, {cfg.num_requests} requests x ({cfg.input_len} prompt + {cfg.output_len} generated) "
            f"tokens, batch {cfg.batch_size}.\n\n{results_table(res['rows'])}\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":  # vLLM's engine starts in a spawned process: the guard is required
    main()
