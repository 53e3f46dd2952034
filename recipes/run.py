"""Entry script for `minitron run`: the whole Minitron recipe from one YAML: correct -> importance -> prune -> distill
-> evaluate -> export, resumable, with output_dir/report.md.

    python recipes/run.py recipes/configs/smollm2-135m/minitron-width.yaml
    accelerate launch --num_processes 8 recipes/run.py recipes/configs/llama-3.1-8b/minitron-4b-width.yaml
    python recipes/run.py CONFIG.yaml --from distill --set distill.max_steps=100
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
