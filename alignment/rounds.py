"""Entry script for `minitron align rounds`: rounds of on-policy RPO (arXiv 2408.11796 sec. 3.5: two rounds after SFT):
each round samples answers from the current policy, scores them with a reward, and trains RPO on each prompt's best and
worst answer.

    python alignment/rounds.py --config alignment/configs/smollm2-135m/rpo-rounds.yaml
    python alignment/rounds.py --config alignment/configs/smollm2-135m/rpo-rounds.yaml --rounds 1 --samples 8
    accelerate launch alignment/rounds.py --config alignment/configs/smollm2-135m/rpo-rounds.yaml

Same options as `minitron align rounds` (every TRL DPOConfig field too); YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["align", "rounds", *sys.argv[1:]]))
