"""Entry script for `minitron eval bfcl`: Berkeley Function-Calling Leaderboard, live categories, teacher vs students
(arXiv 2408.11796 Table 2 reports BFCL v2; this is bfcl-eval's v4 live data, scored by bfcl-eval in a virtual
environment of its own).

    python eval/bfcl.py smollm2-135m runs/demo/width/distill/final --config eval/configs/smollm2-135m/bfcl.yaml
    python eval/bfcl.py smollm2-135m --categories live_simple --limit 50 --max-new-tokens 256

Same options as `minitron eval bfcl`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "bfcl", *sys.argv[1:]]))
