"""Entry script for `minitron eval humaneval`: HumanEval pass@k, teacher vs students, the generated code run sandboxed
(arXiv 2408.11796 Table 1: pass@1 from 20 samples at temperature 0.2, top-p 0.95).

    python eval/humaneval.py smollm2-135m runs/demo/width/distill/final \\
        --config eval/configs/smollm2-135m/humaneval.yaml
    python eval/humaneval.py width --model-base-url http://127.0.0.1:8000/v1 --samples 20 --limit 20

Same options as `minitron eval humaneval`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "humaneval", *sys.argv[1:]]))
