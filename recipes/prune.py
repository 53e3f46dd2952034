"""Entry script for `minitron prune`: prune a model to a target architecture (arXiv 2407.14679 sec. 2, arXiv 2408.11796
sec. 2.2).

    python recipes/prune.py --config recipes/configs/smollm2-135m/prune-width.yaml --output runs/width
    python recipes/prune.py --config recipes/configs/llama-3.1-8b/prune-4b-width.yaml --device cuda

Same options as `minitron prune`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["prune", *sys.argv[1:]]))
