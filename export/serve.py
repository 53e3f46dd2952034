"""Entry script for `minitron serve`: vLLM's OpenAI-compatible server for a checkpoint: deployment of the compressed
model (arXiv 2408.11796 Fig. 9 measures the students' serving throughput), and the endpoint that
`eval/*.py --model-base-url` and a local MT-Bench judge talk to.

    python export/serve.py runs/demo/width/distill/final --config export/configs/smollm2-135m/serve.yaml
    python export/serve.py runs/demo/width/distill/final --port 8000 --served-model-name width

Same options as `minitron serve`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
