"""Entry script for `minitron eval mtbench`: MT-Bench, teacher vs students: 80 two-turn questions, each answer rated
1-10 by an LLM judge behind an OpenAI-compatible API (arXiv 2408.11796 Table 2: GPT-4-Turbo on the corrected reference
answers).

    OPENAI_API_KEY=sk-... python eval/mtbench.py smollm2-135m runs/demo/width/distill/final \\
        --config eval/configs/smollm2-135m/mtbench.yaml
    python eval/mtbench.py width --model-base-url http://127.0.0.1:8000/v1 --judge-base-url http://127.0.0.1:8001/v1 \\
        --judge-model my-judge --categories math coding --limit 5    # judge: export/serve.py JUDGE --port 8001

Same options as `minitron eval mtbench`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "mtbench", *sys.argv[1:]]))
