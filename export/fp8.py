"""Entry script for `minitron export fp8`: FP8 post-training quantization with NVIDIA ModelOpt, the precision of the
paper's runtime comparison (arXiv 2408.11796 Fig. 9: TensorRT-LLM FP8 on one H100; FP8 weights + static activation
scales, calibrated).

    python export/fp8.py runs/demo/width/distill/final --config export/configs/smollm2-135m/fp8.yaml
    python export/fp8.py runs/demo/width/distill/final --output runs/fp8 --calib-samples 64 --device cuda

Same options as `minitron export fp8`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", "fp8", *sys.argv[1:]]))
