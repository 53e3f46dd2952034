"""Evaluation suites, teacher vs students: LM Evaluation Harness tasks (``base``, ``instruct``), code pass@k
(``code``: HumanEval, MBPP), MT-Bench (``mtbench``), BFCL (``bfcl``); ``harness`` runs lm-eval on in-memory
models, ``endpoint`` talks to OpenAI-compatible servers."""

import json
from pathlib import Path

# `minitron eval <name>`: (module under minitron_hf.eval, config class, run function, help). Each run
# function takes (models, cfg, names=None) and returns {"config", "results": {model: {metric: value}}};
# each module has a results_table(out) -> markdown.
SUITES = {
    "base": ("base", "BaseEvalConfig", "run_base_eval", "LM Evaluation Harness tasks, the paper's Table 1 settings"),
    "humaneval": ("code", "HumanEvalConfig", "run_humaneval", "HumanEval pass@k, generated code run sandboxed"),
    "mbpp": ("code", "MBPPConfig", "run_mbpp", "MBPP pass@k (3-shot or chat), generated code run sandboxed"),
    "bfcl": ("bfcl", "BFCLConfig", "run_bfcl", "BFCL live function-calling accuracy (bfcl-eval in its own venv)"),
    "mtbench": ("mtbench", "MTBenchConfig", "run_mtbench", "MT-Bench, two turns rated 1-10 by an LLM judge"),
    "instruct": ("instruct", "InstructEvalConfig", "run_instruct_eval", "the paper's Table 2: IFEval ... MMLU"),
}


def suite_parts(name: str):
    """(config class, run function, results_table) of a suite, its module imported now."""
    import importlib

    mod, cls, run, _ = SUITES[name]
    m = importlib.import_module(f".{mod}", __package__)
    return getattr(m, cls), getattr(m, run), m.results_table


def write_results(output, out: dict, table: str, **jsonl) -> None:
    """Into ``output`` (nothing when unset): results.json (``out``), results.md (``table``) and, for each
    ``name=rows``, name.jsonl with one row per line (the samples, answers or judgments behind the numbers)."""
    if not output:
        return
    from ..outputs import write_json_atomically, write_text_atomically

    d = Path(output)
    d.mkdir(parents=True, exist_ok=True)
    # each file through a temporary sibling and a rename: a full disk leaves the old file or none, never 0 bytes
    for name, rows in jsonl.items():
        write_text_atomically(d / f"{name}.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
    write_text_atomically(d / "results.md", table + "\n")
    write_json_atomically(d / "results.json", out)  # last: its presence means the others are complete
