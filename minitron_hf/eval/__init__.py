"""Evaluation suites, teacher vs students: LM Evaluation Harness tasks (``base``, ``instruct``), code pass@k
(``code``: HumanEval, MBPP, its programs run in ``sandbox``), MT-Bench (``mtbench``), BFCL (``bfcl``), validation LM
loss (``loss``); ``harness`` runs lm-eval on in-memory models, ``endpoint`` talks to OpenAI-compatible servers.

Every suite implements one protocol, :class:`.suite.Suite` (check, generate, score, table; ``run`` drives them),
and the suites that can evaluate served models share :class:`.suite.ServedModelOptions`. A new suite is a module
with a config dataclass and a ``Suite`` subclass, and a line in :data:`SUITES`: ``minitron eval <name>``, the run
config's ``evaluate.benchmarks`` and :func:`suite_parts` pick it up from there."""

import importlib
import json
from pathlib import Path

from ..outputs import OutputError, check_output, input_paths, write_json_atomically, write_text_atomically

# `minitron eval <name>` -> (module under minitron_hf.eval, its Suite subclass). Each suite implements the protocol
# of .suite.Suite (check, generate, score, table); adding one is a module and a line here.
SUITES = {
    "base": ("base", "BaseSuite"),
    "humaneval": ("code", "HumanEvalSuite"),
    "mbpp": ("code", "MBPPSuite"),
    "bfcl": ("bfcl", "BFCLSuite"),
    "mtbench": ("mtbench", "MTBenchSuite"),
    "instruct": ("instruct", "InstructSuite"),
    "loss": ("loss", "LossSuite"),
}


def suite_class(name: str):
    """The :class:`~.suite.Suite` subclass of ``minitron eval <name>``, its module imported now."""
    mod, cls = SUITES[name]
    return getattr(importlib.import_module(f".{mod}", __package__), cls)


def suite_parts(name: str):
    """(config class, run function ``(models, cfg, names=None) -> {"config", ..., "results"}``, table function
    ``(out) -> markdown``) of a suite, its module imported now."""
    cls = suite_class(name)
    return cls.config_class, cls.run_suite, cls.table


def check_results_folder(output, models=(), cfg=None) -> None:
    """Before any model loads: the results folder ``output`` is writable, locked for this command, and no input
    (a model, or a file a field of ``cfg`` names) is a file :func:`write_results` would replace (``results.json``,
    ``results.md``, ``*.jsonl`` directly in it). The folder is added to, never replaced: other files there stay."""
    if not output:
        return
    out = check_output(output, "output", overwrite=True, replaced=False).resolve()
    for p in [*(Path(m).expanduser() for m in models), *input_paths(cfg)]:
        if not p.is_file() and p.exists():
            continue
        p = p.resolve() if p.exists() else p
        if p.parent == out and (p.name in ("results.json", "results.md") or p.suffix == ".jsonl"):
            raise OutputError(f"output={str(output)!r} holds the input {p.name}, which the results written there "
                              f"would replace; choose another output folder")


def write_results(output, out: dict, table: str, **jsonl) -> None:
    """Into ``output`` (nothing when unset): results.json (``out``), results.md (``table``) and, for each
    ``name=rows``, name.jsonl with one row per line (the samples, answers or judgments behind the numbers)."""
    if not output:
        return
    d = Path(output)
    d.mkdir(parents=True, exist_ok=True)
    # each file through a temporary sibling and a rename: a full disk leaves the old file or none, never 0 bytes
    for name, rows in jsonl.items():
        write_text_atomically(d / f"{name}.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
    write_text_atomically(d / "results.md", table + "\n")
    write_json_atomically(d / "results.json", out)  # last: its presence means the others are complete
