"""Entry script for `minitron correct-teacher`: teacher correction (arXiv 2408.11796 sec. 2.1): fine-tune the teacher on
the distillation data.

    accelerate launch recipes/correct_teacher.py --config recipes/configs/llama-3.1-8b/correct-teacher.yaml
    python recipes/correct_teacher.py --config recipes/configs/smollm2-135m/correct-teacher.yaml --mode lora

Same options as `minitron correct-teacher`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["correct-teacher", *sys.argv[1:]]))
