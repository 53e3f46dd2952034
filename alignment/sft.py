"""Entry script for `minitron align sft`: supervised fine-tuning of a distilled student, the first alignment steps of
the instruct variants (arXiv 2408.11796 sec. 3.5: math and code SFT, then instruction SFT; TRL's SFTTrainer).

    python alignment/sft.py --config alignment/configs/smollm2-135m/sft-math-code.yaml
    python alignment/sft.py --config alignment/configs/smollm2-135m/sft-instructions.yaml
    accelerate launch alignment/sft.py --config alignment/configs/smollm2-135m/sft-math-code.yaml

Same options as `minitron align sft` (every TRL SFTConfig field too); YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["align", "sft", *sys.argv[1:]]))
