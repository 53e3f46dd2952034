"""Entry script for `minitron distill`: distil a pruned student from its teacher (arXiv 2408.11796 sec. 2.3, 3.2).

    accelerate launch recipes/distill.py --config recipes/configs/smollm2-135m/distill.yaml
    python recipes/distill.py --config recipes/configs/smollm2-135m/distill.yaml --max-steps 20

Same options as `minitron distill` (every TrainingArguments field too); YAML keys set defaults,
flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
