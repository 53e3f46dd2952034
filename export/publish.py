"""Entry script for `minitron publish`: upload a pruned, distilled or FP8 checkpoint to the Hugging Face Hub with a
generated model card, as the Minitron papers release their students (arXiv 2407.14679, 2408.11796: Minitron 4B/8B,
Llama-3.1-Minitron 4B, Mistral-NeMo-Minitron 8B); the card follows the lineage back to the base model and shows the
recipe and evaluation results.

    python export/publish.py runs/demo/width/distill/final --repo-id my-org/SmolLM2-70M-Minitron --dry-run out/hub
    python export/publish.py runs/demo/width/distill/final --repo-id my-org/SmolLM2-70M-Minitron --private

Same options as `minitron publish` (flags only: it takes no --config).
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish", *sys.argv[1:]]))
