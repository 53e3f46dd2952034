"""Instruct variants (arXiv 2408.11796 sec. 3.5): SFT stages, RPO, and rounds of on-policy RPO.

    accelerate launch recipes/align.py sft --config recipes/configs/smollm2-135m/sft-math-code.yaml
    python recipes/align.py sft --config recipes/configs/smollm2-135m/sft-instructions.yaml
    python recipes/align.py rounds --config recipes/configs/smollm2-135m/rpo-rounds.yaml --rounds 2

Same options as `minitron align sft|rpo|rounds` (TRL's SFTConfig / DPOConfig fields too); YAML keys set
defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["align", *sys.argv[1:]]))
