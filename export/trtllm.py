"""Entry script for `minitron export trtllm`: TensorRT-LLM throughput benchmark datasets and commands, the paper's
runtime comparison (arXiv 2408.11796 Fig. 9: 4B-Depth 2.7x, 4B-Width 1.8x the throughput of the 8B teacher; FP8, batch
32 / 64). The commands run where `trtllm-bench` is on PATH, and are written for a GPU machine otherwise.

    python export/trtllm.py runs/fp8 --config export/configs/smollm2-135m/trtllm.yaml
    python export/trtllm.py runs/fp8 --output runs/trtllm-fp8 --kv-cache-dtype fp8 --batch-size 64

Same options as `minitron export trtllm`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", "trtllm", *sys.argv[1:]]))
