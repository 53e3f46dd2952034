"""The reliability probe's cases (``benchmarks/reliability.py``), as a table: one :class:`Case` a row, each naming
its command, class of input, argv, expectation, and the setup and check it needs by the name of a function of
``reliability_setups.py``. This module holds the classes, the argv templates and the cases of issue 16 (grouped by
command); ``reliability_classes.py`` holds those of the classes of issue 35 (grouped by class). A new class is a
group of several cases across the commands it applies to, not one example (see ``reliability.py``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable

from reliability_setups import (
    chain, check_names, check_nan, copy_fixture, copy_from_fixture, copy_run, files, mkdirs, model, random_txt_dir,
    remove, run_yaml, set_)

# The classes of input probed: a case's ``cls``, one row of the report's class table, in this order (name: what it
# tries), each declared with the short name the rows use. The first ones group the cases of issue 16; the rest are
# the classes of issue 35.
CLASSES: dict[str, str] = {}


def _class(name: str, what: str) -> str:
    CLASSES[name] = what
    return name


CONTROL = _class("controls", "good input: each command must succeed (so that a refusal elsewhere is about the bad "
                             "input)")
CLI = _class("command line", "no command, an unknown or renamed command, or an unknown global flag")
VALUE = _class("bad option values", "out-of-range, non-numeric or unknown option values: negative, zero, huge, bogus "
                                    "choices")
MODEL = _class("damaged or missing models", "model folders that are missing, files, empty, truncated, garbage, NaN, "
                                            "or lack a config, weights or tokenizer")
INPUT = _class("bad data and input files", "missing, empty, garbage or wrongly shaped data, scores, evaluation and "
                                           "preference files")
OUTPUT = _class("output folders", "outputs that exist, are files, '.', /proc, the source, a parent of it or inside it")
CONFIG = _class("bad config files", "broken, empty, binary or wrongly shaped YAML configs, --set overrides, corrupt "
                                    "run records")
RESUME = _class("divergence and resume", "NaN losses, resuming from missing or garbage checkpoints, reruns of "
                                         "finished runs")
INSIDE = _class("input inside output", "an input (data file, blend source, scores, config, chat template, problems "
                                       "file, the student checkpoint) lying inside the output folder, with --overwrite")
STAGE = _class("run stage folders", "`minitron run --overwrite` where a stage folder (out/prune, out/data, ...) holds "
                                    "the user's files next to a config.json and no run records")
LOCK = _class("two commands at once", "a second command on an output another live process has locked (real "
                                      "concurrent processes), and a stale lock left by a SIGKILLed one")
LINK = _class("links and odd names", "outputs that are dangling links, links to user folders, 250-character names, "
                                     "names with a newline, paths under a file")
CACHE = _class("caches", "MINITRON_CACHE set to a file, a path under a file, the empty string, a read-only mount; a "
                         "local folder named like the embedded alias")
PREPARE = _class("failed preparations", "`data prepare` of bad JSON, non-text fields, empty files, BOMs, fake "
                                        "parquet, a blend missing a source (then the rerun on the fixed input), "
                                        "upper-case extensions, linked subfolders; damaged prepared folders read by "
                                        "a command")
DISK = _class("full disk", "outputs on a 64 KiB tmpfs (mounted by the probe; skipped where it cannot mount): refused "
                           "up front for the free space, or the write fails with ENOSPC mid-way, leaving nothing "
                           "partial")
TYPE = _class("targets of the wrong type", "floats, bools and strings where a YAML config expects an integer")
MISMATCH = _class("models that do not match", "a model whose vocabulary is smaller than its tokenizer; resuming from "
                                              "a checkpoint of another shape")
HOSTILE_YAML = _class("hostile YAML", "a YAML alias bomb (9 levels of 9) and a 20 MB YAML file")
SIGNAL = _class("signals", "SIGTERM during a run with --enable-jit-checkpoint, SIGINT (Ctrl-C) to a `data prepare` "
                           "with worker processes")


@dataclass
class Case:
    """One row: a command line, the class of input it tries, and what it must do."""
    name: str
    group: str  # the command, one row of the results table
    cls: str  # the class of input (a key of CLASSES)
    argv: list  # placeholders ({T} the tiny teacher, {D} the case folder, ...: reliability_run.TOKENS) allowed
    expect: str = "fail"  # fail | succeed | either
    setup: Callable | None = None  # setup(d: Path, fx: dict) -> None, or a cleanup() run after the case, always
    sentinels: tuple = ()  # paths relative to the case folder that must survive unchanged (created if absent)
    allow_new: tuple = ()  # globs (relative to the case folder) that a failure may leave
    check: Callable | None = None  # check(d, rc, stdout, stderr) -> list of problems
    timeout: float = 240
    why: str = ""
    env: dict = field(default_factory=dict)  # environment of the command (placeholders allowed; None unsets)
    signal: tuple = ()  # (regex on the command's stdout+stderr, signal, delay s, to the process group): sent once
    stop_line: str = ""  # regex: a last stderr line that is clean too (a run stopped by a signal is no `error:`)
    mem_mb: int = 0  # the address space the command may add to what it has at start (hostile YAML); 0: no cap

    def __post_init__(self):
        assert self.cls in CLASSES, self.cls
        self.argv = list(self.argv)  # a row's own copy of the template it extends


# ---- argv templates ------------------------------------------------------------------------------

PRUNE = ["prune", "--model", "{T}", "--output", "out", "--target", "hidden_size=32", "--calib-samples", "4",
         "--seq-len", "32", "--batch-size", "2", "--val-samples", "2"]
PRUNE_M = ["prune", "--model", "m", "--output", "out", "--target", "hidden_size=32", "--calib-samples", "4",
           "--seq-len", "32", "--batch-size", "2", "--val-samples", "2"]
IMPORTANCE = ["importance", "--model", "{T}", "--output", "out", "--calib-samples", "4", "--seq-len", "32",
              "--batch-size", "2", "--val-samples", "2"]
SEARCH = ["search", "--model", "{T}", "--output", "out", "--budget", "0.7", "--calib-samples", "4", "--val-samples",
          "2", "--seq-len", "32", "--batch-size", "2", "--top-k", "1", "--distill-tokens", "0"]
DISTILL = ["distill", "--student", "{S}", "--teacher", "{T}", "--output-dir", "out", "--max-steps", "2",
           "--per-device-train-batch-size", "2", "--seq-len", "32", "--eval-samples", "2", "--logging-steps", "1",
           "--report-to", "none", "--disable-tqdm", "true", "--save-strategy", "steps", "--save-steps", "1"]
CORRECT = ["correct-teacher", "--model", "{T}", "--output-dir", "out", "--max-steps", "2",
           "--per-device-train-batch-size", "2", "--seq-len", "32", "--eval-samples", "2", "--report-to", "none",
           "--disable-tqdm", "true"]
FP8 = ["export", "fp8", "{T}", "--output", "out", "--calib-samples", "2", "--seq-len", "32", "--batch-size", "2"]
FP8_M = ["export", "fp8", "m", "--output", "out", "--calib-samples", "2", "--seq-len", "32", "--batch-size", "2"]
TRT = ["export", "trtllm", "{T}", "--output", "out", "--num-requests", "2", "--lengths", "16/8", "--run", "false"]
HUMANEVAL = ["eval", "humaneval", "{T}", "--limit", "1", "--max-new-tokens", "8", "--workers", "1"]
MBPP = ["eval", "mbpp", "{T}", "--limit", "1", "--max-new-tokens", "8", "--workers", "1"]
GENERATE = ["generate", "{T}", "--max-new-tokens", "4"]
EVAL_LOSS = ["eval", "loss", "{T}", "--samples", "2", "--seq-len", "32"]
PUBLISH = ["publish", "{DIST}/final", "--repo-id", "me/x", "--dry-run", "up"]
SFT = ["align", "sft", "--model", "{T}", "--data", "builtin:math-code", "--output-dir", "out", "--max-samples", "4",
       "--max-steps", "1", "--per-device-train-batch-size", "2", "--max-length", "64", "--report-to", "none",
       "--disable-tqdm", "true"]
RPO = ["align", "rpo", "--model", "{T}", "--data", "prefs.jsonl", "--output-dir", "out", "--max-steps", "1",
       "--per-device-train-batch-size", "2", "--max-length", "64", "--report-to", "none", "--disable-tqdm", "true"]
PREFS = "\n".join(json.dumps({"prompt": f"Say {w}.", "chosen": f"{w}.", "rejected": "No.", "chosen_reward": 1.0,
                              "rejected_reward": 0.0}) for w in ("yes", "maybe", "hello", "ok")) + "\n"


def opt(argv, flag, value=None, drop=False):
    """argv with ``flag`` set to ``value`` (replacing an existing value), or removed with ``drop``."""
    argv = list(argv)
    if flag in argv:
        i = argv.index(flag)
        has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        del argv[i: i + (2 if has_value else 1)]
    if drop:
        return argv
    return argv + ([flag] if value is None else [flag, value])


# the kill-and-resume measurements' run (reliability.kill_and_resume)
KILL_DISTILL = ["distill", "--student", "{S}", "--teacher", "{T}", "--output-dir", "out", "--max-steps", "6",
                "--per-device-train-batch-size", "4", "--seq-len", "64", "--eval-samples", "4", "--logging-steps",
                "1", "--report-to", "none", "--save-strategy", "steps", "--save-steps", "1", "--log-level", "info",
                "--learning-rate", "1e-3"]


# ---- the cases of issue 16, by command --------------------------------------------------------------

COMMAND_CASES = [
    # ---------------- top level
    Case("cli-no-command", "cli", CLI, []),
    Case("cli-unknown-command", "cli", CLI, ["frobnicate"]),
    Case("cli-unknown-global-flag", "cli", CLI, ["--frobnicate", "prune"]),
    Case("cli-eval-no-suite", "cli", CLI, ["eval"]),
    Case("cli-export-no-format", "cli", CLI, ["export"]),
    Case("cli-align-no-method", "cli", CLI, ["align"]),
    Case("cli-evaluate-renamed", "cli", CLI, ["evaluate", "{T}", "--samples", "2", "--seq-len", "32"],
        check=check_names("eval loss"), why="`minitron evaluate` is now `minitron eval loss`: refused, naming it"),

    # ---------------- prune
    Case("prune-ok", "prune", CONTROL, PRUNE, expect="succeed"),
    Case("prune-unknown-flag", "prune", VALUE, PRUNE + ["--frobnicate", "1"]),
    Case("prune-seq-len-abc", "prune", VALUE, opt(PRUNE, "--seq-len", "abc")),
    Case("prune-seq-len-neg", "prune", VALUE, opt(PRUNE, "--seq-len", "-1")),
    Case("prune-seq-len-0", "prune", VALUE, opt(PRUNE, "--seq-len", "0")),
    Case("prune-seq-len-huge", "prune", VALUE, opt(PRUNE, "--seq-len", "100000"), why="beyond max_position_embeddings"),
    Case("prune-calib-samples-0", "prune", VALUE, opt(PRUNE, "--calib-samples", "0")),
    Case("prune-calib-samples-neg", "prune", VALUE, opt(PRUNE, "--calib-samples", "-3")),
    Case("prune-batch-size-0", "prune", VALUE, opt(PRUNE, "--batch-size", "0")),
    Case("prune-val-samples-neg", "prune", VALUE, opt(PRUNE, "--val-samples", "-1")),
    Case("prune-no-target", "prune", VALUE, opt(PRUNE, "--target", drop=True)),
    Case("prune-target-unknown-key", "prune", VALUE, opt(PRUNE, "--target", "foo=1")),
    Case("prune-target-zero", "prune", VALUE, opt(PRUNE, "--target", "hidden_size=0")),
    Case("prune-target-huge", "prune", VALUE, opt(PRUNE, "--target", "hidden_size=100000")),
    Case("prune-target-negative", "prune", VALUE, opt(PRUNE, "--target", "hidden_size=-8")),
    Case("prune-target-not-int", "prune", VALUE, opt(PRUNE, "--target", "hidden_size=abc")),
    Case("prune-target-no-equals", "prune", VALUE, opt(PRUNE, "--target", "hidden_size")),
    Case("prune-target-float", "prune", VALUE, opt(PRUNE, "--target", "hidden_size=31.5")),
    Case("prune-target-layers-0", "prune", VALUE, opt(PRUNE, "--target", "num_hidden_layers=0")),
    Case("prune-target-layers-more", "prune", VALUE, opt(PRUNE, "--target", "num_hidden_layers=5"),
        why="the model has 2 layers"),
    Case("prune-target-heads-not-divisor", "prune", VALUE, opt(PRUNE, "--target", "num_attention_heads=3"),
        why="4 query heads in 2 KV groups"),
    Case("prune-importance-bogus", "prune", VALUE, PRUNE + ["--importance", "bogus"]),
    Case("prune-depth-metric-bogus", "prune", VALUE, PRUNE + ["--depth-metric", "bogus"]),
    Case("prune-dtype-bad-choice", "prune", VALUE, PRUNE + ["--dtype", "int8"]),
    Case("prune-device-bogus", "prune", VALUE, PRUNE + ["--device", "bogus"]),
    Case("prune-overwrite-not-bool", "prune", VALUE, PRUNE + ["--overwrite", "maybe"]),
    Case("prune-iterative-steps-0", "prune", VALUE, PRUNE + ["--iterative-steps", "0"]),
    Case("prune-max-shard-0", "prune", VALUE, PRUNE + ["--max-shard-size-mb", "0"], expect="either",
        why="0 MB shards: one tensor per shard, or refused"),
    Case("prune-max-shard-neg", "prune", VALUE, PRUNE + ["--max-shard-size-mb", "-1"]),
    Case("prune-validation-fraction-1.5", "prune", VALUE, PRUNE + ["--validation-fraction", "1.5"]),
    Case("prune-model-missing", "prune", MODEL, opt(PRUNE, "--model", "nope")),
    Case("prune-model-is-file", "prune", MODEL, opt(PRUNE, "--model", "{T}/config.json")),
    Case("prune-model-empty-dir", "prune", MODEL, opt(PRUNE, "--model", "empty"), setup=mkdirs("empty")),
    Case("prune-model-truncated-weights", "prune", MODEL, PRUNE_M, setup=model(damage="truncate"), sentinels=("m",)),
    Case("prune-model-zero-byte-weights", "prune", MODEL, PRUNE_M, setup=model(damage="zero-bytes"), sentinels=("m",)),
    Case("prune-model-garbage-weights", "prune", MODEL, PRUNE_M, setup=model(damage="garbage-weights"),
        sentinels=("m",)),
    Case("prune-model-no-weights", "prune", MODEL, PRUNE_M, setup=model(damage="no-weights"), sentinels=("m",)),
    Case("prune-model-garbage-config", "prune", MODEL, PRUNE_M, setup=model(damage="garbage-config"), sentinels=("m",)),
    Case("prune-model-config-list", "prune", MODEL, PRUNE_M, setup=model(damage="config-list"), sentinels=("m",)),
    Case("prune-model-no-tokenizer", "prune", MODEL, PRUNE_M, setup=model(damage="no-tokenizer"), sentinels=("m",)),
    Case("prune-data-missing", "prune", INPUT, PRUNE + ["--data", "nope.jsonl"]),
    Case("prune-data-empty-file", "prune", INPUT, PRUNE + ["--data", "empty.txt"], setup=files(**{"empty.txt": ""})),
    Case("prune-data-empty-jsonl", "prune", INPUT, PRUNE + ["--data", "empty.jsonl"],
        setup=files(**{"empty.jsonl": ""})),
    Case("prune-data-empty-dir", "prune", INPUT, PRUNE + ["--data", "empty"], setup=mkdirs("empty")),
    Case("prune-data-random-bytes-txt", "prune", INPUT, PRUNE + ["--data", "junk"], setup=random_txt_dir()),
    Case("prune-data-garbage-jsonl", "prune", INPUT, PRUNE + ["--data", "bad.jsonl"],
        setup=files(**{"bad.jsonl": "{not json\n"})),
    Case("prune-data-wrong-text-field", "prune", INPUT, PRUNE + ["--data", "{DATA}", "--text-field", "nope"]),
    Case("prune-data-too-little", "prune", INPUT, PRUNE + ["--data", "tiny.jsonl"],
        setup=files(**{"tiny.jsonl": '{"text": "hi"}\n'}), why="one 1-token document"),
    Case("prune-output-nonempty", "prune", OUTPUT, PRUNE, setup=files(**{"out__notes.txt": "mine"}),
        sentinels=("out/notes.txt",)),
    Case("prune-output-is-file", "prune", OUTPUT, PRUNE, sentinels=("out",)),
    Case("prune-output-dot", "prune", OUTPUT, opt(PRUNE, "--output", "."), sentinels=("notes.txt",)),
    Case("prune-output-dot-overwrite", "prune", OUTPUT, opt(PRUNE, "--output", ".") + ["--overwrite"],
        sentinels=("notes.txt",)),
    Case("prune-output-proc", "prune", OUTPUT, opt(PRUNE, "--output", "/proc/minitron-x")),
    Case("prune-output-sys", "prune", OUTPUT, opt(PRUNE, "--output", "/sys/minitron-x")),
    Case("prune-overwrite-parent-of-source", "prune", OUTPUT,
        ["prune", "--model", "runs/m", "--output", "runs", "--overwrite", "--target", "hidden_size=32",
         "--calib-samples", "4", "--seq-len", "32", "--batch-size", "2", "--val-samples", "2"],
        setup=model("runs/m"), sentinels=("runs/m", "runs/notes.txt")),
    Case("prune-overwrite-source", "prune", OUTPUT, opt(PRUNE_M, "--output", "m") + ["--overwrite"], setup=model(),
        sentinels=("m",)),
    Case("prune-output-inside-source", "prune", OUTPUT, opt(PRUNE_M, "--output", "m/pruned"), setup=model(),
        sentinels=("m",)),
    Case("prune-scores-missing", "prune", INPUT, PRUNE + ["--scores", "nope"]),
    Case("prune-scores-garbage", "prune", INPUT, PRUNE + ["--scores", "scores"],
        setup=files(**{"scores__importance.safetensors": b"\x00garbage" * 64})),
    Case("prune-config-missing", "prune", CONFIG, PRUNE + ["--config", "nope.yaml"]),
    Case("prune-config-broken-yaml", "prune", CONFIG, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": "model: {T}\ntarget: {hidden_size: 32\n  output: [out\n"})),
    Case("prune-config-unknown-key", "prune", CONFIG, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": "model: {T}\noutput: out\ntarget: {hidden_size: 32}\ncalib_sample: 4\n"})),
    Case("prune-config-list", "prune", CONFIG, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": "- 1\n- 2\n"})),
    Case("prune-config-target-string", "prune", CONFIG, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": 'model: {T}\noutput: out\ntarget: "hidden_size=32"\ncalib_samples: 4\nseq_len: 32\n'
                                 'val_samples: 2\n'})),
    Case("prune-config-batch-size-float", "prune", CONFIG, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": "model: {T}\noutput: out\ntarget: {hidden_size: 32}\ncalib_samples: 4\n"
                                 "seq_len: 32\nbatch_size: 4.5\nval_samples: 2\n"})),

    # ---------------- importance
    Case("importance-ok", "importance", CONTROL, IMPORTANCE, expect="succeed"),
    Case("importance-calib-samples-0", "importance", VALUE, opt(IMPORTANCE, "--calib-samples", "0")),
    Case("importance-block-size-too-big", "importance", VALUE, IMPORTANCE + ["--block-size", "5"],
        why="the model has 2 layers"),
    Case("importance-block-size-neg", "importance", VALUE, IMPORTANCE + ["--block-size", "-1"]),
    Case("importance-bogus-metric", "importance", VALUE, IMPORTANCE + ["--importance", "bogus"]),
    Case("importance-model-missing", "importance", MODEL, opt(IMPORTANCE, "--model", "nope")),
    Case("importance-model-truncated", "importance", MODEL, opt(IMPORTANCE, "--model", "m"),
        setup=model(damage="truncate")),
    Case("importance-output-nonempty", "importance", OUTPUT, IMPORTANCE, setup=files(**{"out__keep.txt": "mine"}),
        sentinels=("out/keep.txt",)),
    Case("importance-output-proc", "importance", OUTPUT, opt(IMPORTANCE, "--output", "/proc/minitron-x")),
    Case("importance-no-output", "importance", OUTPUT, opt(IMPORTANCE, "--output", drop=True), expect="either"),

    # ---------------- search
    Case("search-budget-0", "search", VALUE, opt(SEARCH, "--budget", "0")),
    Case("search-budget-neg", "search", VALUE, opt(SEARCH, "--budget", "-1")),
    Case("search-budget-above-model", "search", VALUE, opt(SEARCH, "--budget", "1e12")),
    Case("search-budget-abc", "search", VALUE, opt(SEARCH, "--budget", "abc")),
    Case("search-top-k-0", "search", VALUE, opt(SEARCH, "--top-k", "0")),
    Case("search-multiple-0", "search", VALUE, SEARCH + ["--multiple", "0"]),
    Case("search-max-width-prune-2", "search", VALUE, SEARCH + ["--max-width-prune", "2"]),
    Case("search-model-missing", "search", MODEL, opt(SEARCH, "--model", "nope")),
    Case("search-output-proc", "search", OUTPUT, opt(SEARCH, "--output", "/proc/minitron-x")),
    Case("search-output-nonempty", "search", OUTPUT, SEARCH, setup=files(**{"out__keep.txt": "mine"}),
        sentinels=("out/keep.txt",)),

    # ---------------- distill
    Case("distill-ok", "distill", CONTROL, DISTILL, expect="succeed"),
    Case("distill-nan-lr-1e6", "distill", RESUME, opt(opt(DISTILL, "--learning-rate", "1e6"), "--max-steps", "4"),
        expect="either", allow_new=("out", "out/*"), check=check_nan(),
        why="may diverge: then it must stop, keep no non-finite checkpoint and name a finite one"),
    Case("distill-nan-lr-1e30", "distill", RESUME, opt(opt(DISTILL, "--learning-rate", "1e30"), "--max-steps", "4"),
        allow_new=("out", "out/*"), check=check_nan(),
        why="diverges: must stop, keep no non-finite checkpoint and name a finite one"),
    Case("distill-nan-lr-1e30-progress-bar", "distill", RESUME,
        opt(opt(opt(DISTILL, "--learning-rate", "1e30"), "--max-steps", "4"), "--disable-tqdm", drop=True),
        allow_new=("out", "out/*"), check=check_nan(), why="as above, with the progress bar a user sees"),
    Case("distill-max-steps-neg", "distill", VALUE, opt(DISTILL, "--max-steps", "-5")),
    Case("distill-max-steps-0", "distill", VALUE, opt(DISTILL, "--max-steps", "0")),
    Case("distill-max-steps-abc", "distill", VALUE, opt(DISTILL, "--max-steps", "abc")),
    Case("distill-batch-size-0", "distill", VALUE, opt(DISTILL, "--per-device-train-batch-size", "0")),
    Case("distill-grad-accum-0", "distill", VALUE, DISTILL + ["--gradient-accumulation-steps", "0"]),
    Case("distill-lr-neg", "distill", VALUE, opt(DISTILL, "--learning-rate", "-1"),
        why="no empty output folder may be left"),
    Case("distill-lr-nan-string", "distill", VALUE, opt(DISTILL, "--learning-rate", "nan")),
    Case("distill-no-output-dir", "distill", OUTPUT, opt(DISTILL, "--output-dir", drop=True)),
    Case("distill-output-dot", "distill", OUTPUT, opt(DISTILL, "--output-dir", "."), sentinels=("notes.txt",),
        expect="either",
        why="a trainer's output_dir may be the current folder: it adds checkpoint-*/final/ there and deletes nothing"),
    Case("distill-output-proc", "distill", OUTPUT, opt(DISTILL, "--output-dir", "/proc/minitron-x")),
    Case("distill-output-is-student", "distill", OUTPUT, opt(opt(DISTILL, "--student", "m"), "--output-dir", "m"),
        setup=model(), sentinels=("m",)),
    Case("distill-output-has-final", "distill", OUTPUT, DISTILL, setup=copy_fixture("DIST", "out"), sentinels=("out",)),
    Case("distill-second-run-checkpoints-no-final", "distill", OUTPUT, DISTILL,
        setup=chain(copy_fixture("DIST", "out"), remove("out/final"), remove("out/distill.json", missing_ok=True)),
        sentinels=("out/checkpoint-1", "out/checkpoint-2"),
        why="a new run would overwrite the earlier run's checkpoints: refuse, or resume"),
    Case("distill-resume-true-fresh", "distill", RESUME, DISTILL + ["--resume-from-checkpoint", "true"],
        expect="either", allow_new=("out", "out/*"), why="no checkpoint yet: start over or say so"),
    Case("distill-resume-missing-path", "distill", RESUME, DISTILL + ["--resume-from-checkpoint", "nope/checkpoint-9"]),
    Case("distill-resume-garbage-checkpoint", "distill", RESUME, DISTILL + ["--resume-from-checkpoint", "ck"],
        setup=files(**{"ck__trainer_state.json": "{garbage", "ck__model.safetensors": b"\x00" * 10}),
        sentinels=("ck",)),
    Case("distill-no-student", "distill", VALUE, opt(DISTILL, "--student", drop=True)),
    Case("distill-student-missing", "distill", MODEL, opt(DISTILL, "--student", "nope")),
    Case("distill-student-truncated", "distill", MODEL, opt(DISTILL, "--student", "m"), setup=model(damage="truncate"),
        sentinels=("m",)),
    Case("distill-student-nan-weights", "distill", MODEL, opt(DISTILL, "--student", "m"),
        setup=model(damage="nan-weights"), sentinels=("m",), why="non-finite weights in the student"),
    Case("distill-student-garbage-config", "distill", MODEL, opt(DISTILL, "--student", "m"),
        setup=model(damage="garbage-config")),
    Case("distill-teacher-garbage-config", "distill", MODEL, opt(DISTILL, "--teacher", "m"),
        setup=model(damage="garbage-config")),
    Case("distill-teacher-truncated", "distill", MODEL, opt(DISTILL, "--teacher", "m"), setup=model(damage="truncate")),
    Case("distill-vocab-mismatch", "distill", MODEL, opt(DISTILL, "--student", "{V}")),
    Case("distill-seq-len-1", "distill", VALUE, opt(DISTILL, "--seq-len", "1")),
    Case("distill-seq-len-huge", "distill", VALUE, opt(DISTILL, "--seq-len", "100000")),
    Case("distill-eval-samples-0", "distill", VALUE, opt(DISTILL, "--eval-samples", "0")),
    Case("distill-kd-loss-bogus", "distill", VALUE, DISTILL + ["--kd-loss", "bogus"]),
    Case("distill-temperature-0", "distill", VALUE, DISTILL + ["--temperature", "0"]),
    Case("distill-temperature-neg", "distill", VALUE, DISTILL + ["--temperature", "-1"]),
    Case("distill-lr-scheduler-kwargs-bad-json", "distill", VALUE,
        DISTILL + ["--lr-scheduler-kwargs", "{min_lr: oops"]),
    Case("distill-lr-scheduler-bogus", "distill", VALUE, DISTILL + ["--lr-scheduler-type", "bogus"]),
    Case("distill-save-steps-0", "distill", VALUE, opt(DISTILL, "--save-steps", "0")),
    Case("distill-warmup-neg", "distill", VALUE, DISTILL + ["--warmup-steps", "-1"]),
    Case("distill-model-dtype-bad", "distill", VALUE, DISTILL + ["--model-dtype", "int8"]),
    Case("distill-data-random-bytes-txt", "distill", INPUT, DISTILL + ["--data", "junk"], setup=random_txt_dir()),
    Case("distill-optim-bogus", "distill", VALUE, DISTILL + ["--optim", "bogus"]),

    # ---------------- correct-teacher
    Case("correct-ok", "correct-teacher", CONTROL, CORRECT, expect="succeed"),
    Case("correct-mode-bogus", "correct-teacher", VALUE, CORRECT + ["--mode", "bogus"]),
    Case("correct-lora-r-0", "correct-teacher", VALUE, CORRECT + ["--mode", "lora", "--lora-r", "0"]),
    Case("correct-max-steps-neg", "correct-teacher", VALUE, opt(CORRECT, "--max-steps", "-5")),
    Case("correct-model-missing", "correct-teacher", MODEL, opt(CORRECT, "--model", "nope")),
    Case("correct-model-truncated", "correct-teacher", MODEL, opt(CORRECT, "--model", "m"),
        setup=model(damage="truncate")),
    Case("correct-output-proc", "correct-teacher", OUTPUT, opt(CORRECT, "--output-dir", "/proc/minitron-x")),
    Case("correct-no-output-dir", "correct-teacher", OUTPUT, opt(CORRECT, "--output-dir", drop=True)),
    Case("correct-lr-neg", "correct-teacher", VALUE, CORRECT + ["--learning-rate", "-1"]),

    # ---------------- run
    Case("run-rerun-finished-skips", "run", RESUME, ["run", "run/run.yaml"], expect="succeed",
        setup=copy_run, timeout=300),
    Case("run-output-has-unrelated-files", "run", OUTPUT, ["run", "run.yaml"], expect="either", setup=run_yaml(),
        sentinels=("out/distill/notes.txt", "out/export/important.txt", "out/report.md"), timeout=400,
        why="an output_dir that holds files this run did not write"),
    Case("run-distill-max-steps-neg", "run", VALUE, ["run", "run.yaml"], setup=run_yaml(set_("distill.max_steps", -5))),
    Case("run-distill-max-steps-0", "run", VALUE, ["run", "run.yaml"], setup=run_yaml(set_("distill.max_steps", 0))),
    Case("run-distill-max-steps-list", "run", VALUE, ["run", "run.yaml"],
        setup=run_yaml(set_("distill.max_steps", [2]))),
    Case("run-lr-scheduler-kwargs-list", "run", VALUE, ["run", "run.yaml"],
        setup=run_yaml(set_("distill.lr_scheduler_kwargs", [1, 2]))),
    Case("run-prune-batch-size-float", "run", VALUE, ["run", "run.yaml"],
        setup=run_yaml(set_("prune.batch_size", 4.5))),
    Case("run-distill-batch-size-float", "run", VALUE, ["run", "run.yaml"],
        setup=run_yaml(set_("distill.per_device_train_batch_size", 4.5))),
    Case("run-distill-batch-size-0", "run", VALUE, ["run", "run.yaml"],
        setup=run_yaml(set_("distill.per_device_train_batch_size", 0))),
    Case("run-broken-yaml", "run", CONFIG, ["run", "run.yaml"],
        setup=run_yaml(raw="output_dir: {D}/out\nteacher: {T}\nprune:\n  target: {hidden_size: 32\n distill: [\n")),
    Case("run-yaml-tabs", "run", CONFIG, ["run", "run.yaml"],
        setup=run_yaml(raw="output_dir: {D}/out\n\tteacher: {T}\n")),
    Case("run-yaml-empty", "run", CONFIG, ["run", "run.yaml"], setup=run_yaml(raw="")),
    Case("run-yaml-list", "run", CONFIG, ["run", "run.yaml"], setup=run_yaml(raw="- a\n- b\n")),
    Case("run-yaml-binary", "run", CONFIG, ["run", "run.yaml"], setup=files(**{"run.yaml": os.urandom(512)})),
    Case("run-config-missing", "run", CONFIG, ["run", "nope.yaml"]),
    Case("run-config-is-dir", "run", CONFIG, ["run", "cfgdir"], setup=mkdirs("cfgdir")),
    Case("run-no-output-dir", "run", OUTPUT, ["run", "run.yaml"], setup=run_yaml(out=None)),
    Case("run-unknown-top-key", "run", CONFIG, ["run", "run.yaml"], setup=run_yaml(set_("frobnicate", 1))),
    Case("run-unknown-section-key", "run", CONFIG, ["run", "run.yaml"], setup=run_yaml(set_("distill.max_step", 2))),
    Case("run-target-string", "run", CONFIG, ["run", "run.yaml"],
        setup=run_yaml(set_("prune.target", "hidden_size=32"))),
    Case("run-target-huge", "run", VALUE, ["run", "run.yaml"],
        setup=run_yaml(set_("prune.target", {"hidden_size": 100000}))),
    Case("run-target-unknown-key", "run", VALUE, ["run", "run.yaml"], setup=run_yaml(set_("prune.target", {"foo": 1}))),
    Case("run-seq-len-neg", "run", VALUE, ["run", "run.yaml"], setup=run_yaml(set_("seq_len", -1))),
    Case("run-export-format-bogus", "run", VALUE, ["run", "run.yaml"],
        setup=run_yaml(set_("export.formats", ["bogus"]))),
    Case("run-data-missing", "run", INPUT, ["run", "run.yaml"], setup=run_yaml(set_("data", "nope.jsonl"))),
    Case("run-output-dot", "run", OUTPUT, ["run", "run.yaml"], setup=run_yaml(out="."), sentinels=("notes.txt",)),
    Case("run-output-proc", "run", OUTPUT, ["run", "run.yaml"], setup=run_yaml(set_("output_dir", "/proc/minitron-x"))),
    Case("run-output-is-file", "run", OUTPUT, ["run", "run.yaml"], setup=run_yaml(), sentinels=("out",)),
    Case("run-teacher-missing", "run", MODEL, ["run", "run.yaml"], setup=run_yaml(set_("teacher", "nope"))),
    Case("run-teacher-truncated-weights", "run", MODEL, ["run", "run.yaml"],
        setup=chain(model(damage="truncate"), run_yaml(teacher="m")), sentinels=("m",)),
    Case("run-teacher-garbage-config", "run", MODEL, ["run", "run.yaml"],
        setup=chain(model(damage="garbage-config"), run_yaml(teacher="m")), sentinels=("m",)),
    Case("run-set-not-int", "run", CONFIG, ["run", "run.yaml", "--set", "distill.max_steps=abc"], setup=run_yaml()),
    Case("run-set-no-equals", "run", CONFIG, ["run", "run.yaml", "--set", "distill.max_steps"], setup=run_yaml()),
    Case("run-set-unknown-section", "run", CONFIG, ["run", "run.yaml", "--set", "distil.max_steps=3"],
        setup=run_yaml()),
    Case("run-from-bogus", "run", VALUE, ["run", "run.yaml", "--from", "bogus"], setup=run_yaml()),
    Case("run-only-distill-fresh", "run", VALUE, ["run", "run.yaml", "--only", "distill"], setup=run_yaml(),
        why="its inputs (prune) do not exist yet"),
    Case("run-corrupt-done-json-rerun", "run", RESUME, ["run", "run/run.yaml"], expect="either",
        setup=chain(copy_run, files(**{"run/out/prune/done.json": '{"stage": "prune", "con'})),
        sentinels=("run/out/importance",), timeout=300, why="rerun: redo the stage or say which file is corrupt"),
    Case("run-done-json-empty-rerun", "run", RESUME, ["run", "run/run.yaml"], expect="either",
        setup=chain(copy_run, files(**{"run/out/distill/done.json": ""})), timeout=300),
    Case("run-resume-config-json-garbage", "run", RESUME, ["run", "run/run.yaml"], expect="either",
        setup=chain(copy_run, remove("run/out/export/done.json"), files(**{"run/out/export/config.json": "garbage"})),
        timeout=300),

    # ---------------- publish (always --dry-run: nothing is uploaded)
    Case("publish-ok", "publish", CONTROL, PUBLISH, expect="succeed"),
    Case("publish-dry-run-nonempty", "publish", OUTPUT, PUBLISH, setup=files(**{"up__keep.txt": "mine"}),
        sentinels=("up/keep.txt",)),
    Case("publish-dry-run-is-run-folder", "publish", OUTPUT,
        ["publish", "run/export/hf", "--repo-id", "me/x", "--dry-run", "run"],
        setup=copy_from_fixture("DIST", "final", "run/export/hf"),
        sentinels=("run/report.md", "run/export/hf"), why="DIR is the run folder that holds MODEL"),
    Case("publish-dry-run-is-model", "publish", OUTPUT, ["publish", "m", "--repo-id", "me/x", "--dry-run", "m"],
        setup=model(), sentinels=("m",)),
    Case("publish-dry-run-inside-model", "publish", OUTPUT, ["publish", "m", "--repo-id", "me/x", "--dry-run", "m/up"],
        setup=model(), sentinels=("m",)),
    Case("publish-dry-run-dot", "publish", OUTPUT, opt(PUBLISH, "--dry-run", "."), sentinels=("notes.txt",)),
    Case("publish-dry-run-proc", "publish", OUTPUT, opt(PUBLISH, "--dry-run", "/proc/minitron-x")),
    Case("publish-repo-id-no-namespace", "publish", VALUE, opt(PUBLISH, "--repo-id", "x")),
    Case("publish-repo-id-spaces", "publish", VALUE, opt(PUBLISH, "--repo-id", "me/not a repo")),
    Case("publish-repo-id-three-parts", "publish", VALUE, opt(PUBLISH, "--repo-id", "a/b/c")),
    Case("publish-repo-id-empty", "publish", VALUE, opt(PUBLISH, "--repo-id", "")),
    Case("publish-no-repo-id", "publish", VALUE, opt(PUBLISH, "--repo-id", drop=True)),
    Case("publish-model-missing", "publish", MODEL, ["publish", "nope", "--repo-id", "me/x", "--dry-run", "up"]),
    Case("publish-model-is-file", "publish", MODEL,
        ["publish", "{T}/config.json", "--repo-id", "me/x", "--dry-run", "up"]),
    Case("publish-model-truncated-weights", "publish", MODEL, ["publish", "m", "--repo-id", "me/x", "--dry-run", "up"],
        setup=model(damage="truncate"), sentinels=("m",)),
    Case("publish-model-garbage-config", "publish", MODEL, ["publish", "m", "--repo-id", "me/x", "--dry-run", "up"],
        setup=model(damage="garbage-config"), sentinels=("m",)),
    Case("publish-model-no-weights", "publish", MODEL, ["publish", "m", "--repo-id", "me/x", "--dry-run", "up"],
        setup=model(damage="no-weights")),
    Case("publish-evaluation-missing", "publish", INPUT, PUBLISH + ["--evaluation", "nope.json"]),
    Case("publish-evaluation-garbage", "publish", INPUT, PUBLISH + ["--evaluation", "ev.json"],
        setup=files(**{"ev.json": "{oops"})),
    Case("publish-evaluation-list", "publish", INPUT, PUBLISH + ["--evaluation", "ev.json"],
        setup=files(**{"ev.json": "[1, 2]"})),
    Case("publish-evaluation-wrong-shape", "publish", INPUT, PUBLISH + ["--evaluation", "ev.json"],
        setup=files(**{"ev.json": '{"m": 3}'})),
    Case("publish-evaluation-is-dir", "publish", INPUT, PUBLISH + ["--evaluation", "evdir"], setup=mkdirs("evdir")),
    Case("publish-relation-bogus", "publish", VALUE, PUBLISH + ["--base-model-relation", "bogus"]),
    Case("publish-base-model-bad-id", "publish", VALUE, PUBLISH + ["--base-model", "not a model id"]),

    # ---------------- export fp8
    Case("fp8-ok", "export fp8", CONTROL, FP8, expect="succeed"),
    Case("fp8-overwrite-parent-of-source", "export fp8", OUTPUT,
        ["export", "fp8", "runs/m", "--output", "runs", "--overwrite", "--calib-samples", "2", "--seq-len", "32",
         "--batch-size", "2"], setup=model("runs/m"), sentinels=("runs/m", "runs/notes.txt")),
    Case("fp8-overwrite-source", "export fp8", OUTPUT, opt(FP8_M, "--output", "m") + ["--overwrite"], setup=model(),
        sentinels=("m",)),
    Case("fp8-output-proc", "export fp8", OUTPUT, opt(FP8, "--output", "/proc/minitron-x")),
    Case("fp8-output-sys", "export fp8", OUTPUT, opt(FP8, "--output", "/sys/minitron-x")),
    Case("fp8-output-dot", "export fp8", OUTPUT, opt(FP8, "--output", "."), sentinels=("notes.txt",)),
    Case("fp8-output-nonempty", "export fp8", OUTPUT, FP8, setup=files(**{"out__keep.txt": "mine"}),
        sentinels=("out/keep.txt",)),
    Case("fp8-model-truncated", "export fp8", MODEL, FP8_M, setup=model(damage="truncate"), sentinels=("m",)),
    Case("fp8-model-garbage-config", "export fp8", MODEL, FP8_M, setup=model(damage="garbage-config"),
        sentinels=("m",)),
    Case("fp8-model-missing", "export fp8", MODEL, ["export", "fp8", "nope", "--output", "out"]),
    Case("fp8-calib-samples-0", "export fp8", VALUE, opt(FP8, "--calib-samples", "0")),
    Case("fp8-seq-len-neg", "export fp8", VALUE, opt(FP8, "--seq-len", "-1")),
    Case("fp8-batch-size-0", "export fp8", VALUE, opt(FP8, "--batch-size", "0")),
    Case("fp8-dtype-bad-choice", "export fp8", VALUE, FP8 + ["--dtype", "int4"]),
    Case("fp8-no-output", "export fp8", OUTPUT, opt(FP8, "--output", drop=True)),

    # ---------------- export trtllm
    Case("trtllm-ok", "export trtllm", CONTROL, TRT, expect="succeed"),
    Case("trtllm-lengths-garbage", "export trtllm", VALUE, opt(TRT, "--lengths", "abc")),
    Case("trtllm-lengths-zero", "export trtllm", VALUE, opt(TRT, "--lengths", "0/0")),
    Case("trtllm-batch-size-0", "export trtllm", VALUE, TRT + ["--batch-size", "0"]),
    Case("trtllm-num-requests-neg", "export trtllm", VALUE, opt(TRT, "--num-requests", "-1")),
    Case("trtllm-mem-fraction-2", "export trtllm", VALUE, TRT + ["--kv-cache-free-gpu-memory-fraction", "2"]),
    Case("trtllm-tp-size-0", "export trtllm", VALUE, TRT + ["--tp-size", "0"]),
    Case("trtllm-model-missing", "export trtllm", MODEL, opt(TRT, "{T}", drop=True) + ["nope"]),
    Case("trtllm-model-garbage-config", "export trtllm", MODEL,
        ["export", "trtllm", "m", "--output", "out", "--run", "false"], setup=model(damage="garbage-config")),
    Case("trtllm-output-nonempty", "export trtllm", OUTPUT, TRT, setup=files(**{"out__keep.txt": "mine"}),
        sentinels=("out/keep.txt",)),
    Case("trtllm-output-proc", "export trtllm", OUTPUT, opt(TRT, "--output", "/proc/minitron-x")),
    Case("trtllm-output-is-model", "export trtllm", OUTPUT,
        ["export", "trtllm", "m", "--output", "m", "--overwrite", "--run", "false"], setup=model(), sentinels=("m",)),

    # ---------------- eval humaneval / mbpp
    Case("humaneval-ok", "eval humaneval", CONTROL, HUMANEVAL, expect="succeed"),
    Case("humaneval-model-truncated", "eval humaneval", MODEL,
        ["eval", "humaneval", "m", "--limit", "1", "--max-new-tokens", "8"], setup=model(damage="truncate")),
    Case("humaneval-model-missing", "eval humaneval", MODEL, ["eval", "humaneval", "nope", "--limit", "1"]),
    Case("humaneval-limit-0", "eval humaneval", VALUE, opt(HUMANEVAL, "--limit", "0")),
    Case("humaneval-limit-neg", "eval humaneval", VALUE, opt(HUMANEVAL, "--limit", "-1")),
    Case("humaneval-samples-0", "eval humaneval", VALUE, HUMANEVAL + ["--samples", "0"]),
    Case("humaneval-temperature-neg", "eval humaneval", VALUE, HUMANEVAL + ["--temperature", "-1"]),
    Case("humaneval-top-p-2", "eval humaneval", VALUE, HUMANEVAL + ["--top-p", "2"]),
    Case("humaneval-max-new-tokens-0", "eval humaneval", VALUE, opt(HUMANEVAL, "--max-new-tokens", "0")),
    Case("humaneval-names-count", "eval humaneval", VALUE, HUMANEVAL + ["--names", "a", "b"]),
    Case("humaneval-output-proc", "eval humaneval", OUTPUT, HUMANEVAL + ["--output", "/proc/minitron-x"]),
    Case("humaneval-output-nonempty", "eval humaneval", OUTPUT, HUMANEVAL + ["--output", "res"], expect="either",
        setup=files(**{"res__keep.txt": "mine"}), sentinels=("res/keep.txt",)),
    Case("humaneval-timeout-0", "eval humaneval", VALUE, HUMANEVAL + ["--timeout-s", "0"]),
    Case("mbpp-offline-no-data", "eval mbpp", INPUT, MBPP, why="offline: the Hub dataset cannot be fetched"),
    Case("mbpp-data-files-missing", "eval mbpp", INPUT, MBPP + ["--data-files", "nope.parquet"]),
    Case("mbpp-data-files-garbage", "eval mbpp", INPUT, MBPP + ["--data-files", "m.jsonl"],
        setup=files(**{"m.jsonl": "{oops\n"})),
    Case("mbpp-data-files-wrong-fields", "eval mbpp", INPUT, MBPP + ["--data-files", "m.jsonl"],
        setup=files(**{"m.jsonl": '{"text": "hello"}\n'})),
    Case("mbpp-split-bad-choice", "eval mbpp", VALUE, MBPP + ["--split", "bogus"]),
    Case("mbpp-num-fewshot-neg", "eval mbpp", VALUE, MBPP + ["--num-fewshot", "-1"]),

    # ---------------- generate / eval loss
    Case("generate-ok", "generate", CONTROL, GENERATE, expect="succeed"),
    Case("generate-model-missing", "generate", MODEL, ["generate", "nope"]),
    Case("generate-model-truncated", "generate", MODEL, ["generate", "m", "--max-new-tokens", "4"],
        setup=model(damage="truncate")),
    Case("generate-model-garbage-config", "generate", MODEL, ["generate", "m"], setup=model(damage="garbage-config")),
    Case("generate-model-no-tokenizer", "generate", MODEL, ["generate", "m", "--max-new-tokens", "4"],
        setup=model(damage="no-tokenizer")),
    Case("generate-max-new-tokens-neg", "generate", VALUE, opt(GENERATE, "--max-new-tokens", "-1")),
    Case("generate-max-new-tokens-abc", "generate", VALUE, opt(GENERATE, "--max-new-tokens", "abc")),
    Case("generate-empty-prompt", "generate", VALUE, GENERATE + ["--prompt", ""], expect="either"),
    Case("evaluate-ok", "eval loss", CONTROL, EVAL_LOSS, expect="succeed"),
    Case("evaluate-model-missing", "eval loss", MODEL, ["eval", "loss", "nope", "--samples", "2", "--seq-len", "32"]),
    Case("evaluate-model-truncated", "eval loss", MODEL, ["eval", "loss", "m", "--samples", "2", "--seq-len", "32"],
        setup=model(damage="truncate")),
    Case("evaluate-samples-0", "eval loss", VALUE, opt(EVAL_LOSS, "--samples", "0")),
    Case("evaluate-seq-len-0", "eval loss", VALUE, opt(EVAL_LOSS, "--seq-len", "0")),
    Case("evaluate-seq-len-huge", "eval loss", VALUE, opt(EVAL_LOSS, "--seq-len", "100000")),
    Case("evaluate-data-missing", "eval loss", INPUT, EVAL_LOSS + ["--data", "nope.jsonl"]),
    Case("evaluate-data-random-bytes", "eval loss", INPUT, EVAL_LOSS + ["--data", "junk"], setup=random_txt_dir()),
    Case("evaluate-vocab-mismatch-model", "eval loss", MODEL,
        ["eval", "loss", "{T}", "{V}", "--samples", "2", "--seq-len", "32"], expect="either",
        why="a model with another vocabulary than the first: refuse or evaluate each with its own tokenizer"),

    # ---------------- align
    Case("sft-ok", "align sft", CONTROL, SFT, expect="succeed"),
    Case("sft-data-missing", "align sft", INPUT, opt(SFT, "--data", "nope.jsonl")),
    Case("sft-data-garbage", "align sft", INPUT, opt(SFT, "--data", "bad.jsonl"),
        setup=files(**{"bad.jsonl": "{oops\n"})),
    Case("sft-data-builtin-bogus", "align sft", INPUT, opt(SFT, "--data", "builtin:bogus")),
    Case("sft-max-samples-0", "align sft", VALUE, opt(SFT, "--max-samples", "0")),
    Case("sft-model-missing", "align sft", MODEL, opt(SFT, "--model", "nope")),
    Case("sft-output-proc", "align sft", OUTPUT, opt(SFT, "--output-dir", "/proc/minitron-x")),
    Case("sft-max-steps-neg", "align sft", VALUE, opt(SFT, "--max-steps", "-5")),
    Case("sft-output-nonempty", "align sft", OUTPUT, SFT, setup=files(**{"out__keep.txt": "mine"}),
        sentinels=("out/keep.txt",), expect="either"),
    Case("rpo-ok", "align rpo", CONTROL, RPO, expect="succeed", setup=files(**{"prefs.jsonl": PREFS})),
    Case("rpo-data-missing", "align rpo", INPUT, RPO),
    Case("rpo-no-data", "align rpo", INPUT, opt(RPO, "--data", drop=True)),
    Case("rpo-data-wrong-fields", "align rpo", INPUT, RPO, setup=files(**{"prefs.jsonl": '{"text": "hi"}\n'})),
    Case("rpo-data-no-rewards", "align rpo", INPUT, RPO, setup=files(**{"prefs.jsonl": '{"prompt": "a", "chosen": "b", '
                                                                    '"rejected": "c"}\n'})),
    Case("rpo-loss-bad-choice", "align rpo", VALUE, RPO + ["--rpo-loss", "bogus"],
        setup=files(**{"prefs.jsonl": PREFS})),
    Case("rpo-beta-neg", "align rpo", VALUE, RPO + ["--beta", "-1"], setup=files(**{"prefs.jsonl": PREFS})),
    Case("rpo-ref-model-missing", "align rpo", MODEL, RPO + ["--ref-model", "nope"],
        setup=files(**{"prefs.jsonl": PREFS})),
    Case("rpo-output-proc", "align rpo", OUTPUT, opt(RPO, "--output-dir", "/proc/minitron-x"),
        setup=files(**{"prefs.jsonl": PREFS})),

]
