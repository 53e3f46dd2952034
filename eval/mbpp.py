"""Entry script for `minitron eval mbpp`: MBPP pass@k, teacher vs students, the generated code run sandboxed (arXiv
2408.11796 Tables 1 and 2; 3-shot prompts for base models, one chat request for instruct models).

    python eval/mbpp.py smollm2-135m runs/demo/width/distill/final --config eval/configs/smollm2-135m/mbpp.yaml
    python eval/mbpp.py smollm2-135m --data-files mbpp.jsonl --samples 1 --temperature 0   # offline, greedy

Same options as `minitron eval mbpp`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "mbpp", *sys.argv[1:]]))
