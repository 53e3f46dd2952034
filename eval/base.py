"""Entry script for `minitron eval base`: base-model benchmarks through LM Evaluation Harness, teacher vs students, one
column per model: the paper's Table 1 settings by default (arXiv 2408.11796: Winogrande 5, ARC-Challenge 25, MMLU 5,
HellaSwag 10, GSM8K 5, TruthfulQA 0 shots; their data comes from the Hub).

    python eval/base.py smollm2-135m runs/demo/width/distill/final --config eval/configs/smollm2-135m/base.yaml
    python eval/base.py smollm2-135m runs/demo/width/distill/final --names teacher width --output runs/eval-base

Same options as `minitron eval base`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "base", *sys.argv[1:]]))
