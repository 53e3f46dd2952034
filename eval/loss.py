"""Entry script for `minitron eval loss`: validation LM loss and perplexity of checkpoints on the same validation
split, one row per model (the number pruning is judged by: arXiv 2408.11796 Fig. 7 and 8 compare LM loss).

    python eval/loss.py smollm2-135m runs/demo/width/distill/final --samples 16 --seq-len 256
    python eval/loss.py smollm2-135m runs/demo/width/prune/model --data python-docs --output runs/eval-loss

Same options as `minitron eval loss`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "loss", *sys.argv[1:]]))
