"""Entry script for `minitron eval instruct`: the instruct benchmarks of aligned models, teacher vs students, in one
table (arXiv 2408.11796 Table 2: IFEval, MT-Bench, BFCL live, GPQA, HumanEval, MBPP, GSM8K, MMLU).

    OPENAI_API_KEY=sk-... python eval/instruct.py teacher/ width/ depth/ --names teacher width depth \\
        --config eval/configs/smollm2-135m/instruct.yaml
    python eval/instruct.py smollm2-135m runs/smollm2-135m/rpo-rounds/round_2/final --benchmarks ifeval gsm8k

Same options as `minitron eval instruct`; YAML keys set defaults, flags override them.
"""

import sys

from minitron_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "instruct", *sys.argv[1:]]))
