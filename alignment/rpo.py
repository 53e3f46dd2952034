"""Entry script for `minitron align rpo`: Reward-aware Preference Optimization on preference rows with rewards (arXiv
2408.11796 sec. 3.5; NeMo-Aligner's RPO losses on TRL's DPOTrainer). Rows: prompt, chosen, rejected, chosen_reward,
rejected_reward.

    python alignment/rpo.py --config alignment/configs/smollm2-135m/rpo.yaml
    python alignment/rpo.py --model M --data prefs.jsonl --output-dir runs/rpo --rpo-loss rpo_sq
    accelerate launch alignment/rpo.py --config alignment/configs/smollm2-135m/rpo.yaml

Same options as `minitron align rpo` (every TRL DPOConfig field too); YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["align", "rpo", *sys.argv[1:]]))
