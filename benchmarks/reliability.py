"""Hostile-user probe of every ``minitron`` command (issue 16, "Tests and numbers").

Runs many bad inputs (and a few good ones, as controls) against the real CLI and classifies each outcome:

- ``clean``: nonzero exit, stderr's last line starts with ``minitron `` and contains ``error:`` (a bare
  ``minitron: error:`` only for the top-level cases, where no command was given), no traceback, every sentinel
  intact and nothing partial left behind (``ok`` for a control, or an either-way case, that succeeded);
- ``traceback``: a Python traceback was printed;
- ``silent success``: exit 0 where the input should have been refused;
- ``data lost``: a sentinel (a file or folder that existed before the command) is gone or changed;
- ``left behind``: the command failed but left something new (a partial output, an empty folder, a stray
  temporary folder) in its working folder or its temporary directory;
- ``timeout``;
- ``bug (exit 3)``: the CLI's own "this is a bug, run with -v" exit, without a traceback;
- ``unclear``: nonzero exit whose last stderr line is not ``minitron <cmd>: error: ...``;
- ``refused``: a control that should have succeeded failed (cleanly);
- ``check failed``: a case-specific check (e.g. no non-finite checkpoint after a NaN loss, the message names the
  input the case is about, the rerun on the fixed input succeeds) did not hold;
- ``skipped``: the case's situation cannot be built here (a tmpfs for the full disk cases cannot be mounted).

Every case belongs to a class of input (``Case.cls``, one of :data:`CLASSES`): the report counts the cases of each
class as well as of each command. A probe passes its own cases; what matters is the classes it tries (issue 35: a
second probe written from scratch found 39 of 60 cases wrong, in classes this one had never tried), so a new
class is added as a group of several cases across the commands it applies to, not as one example. Cases may set
environment variables (``env``), start helper processes or mounts in their setup (a setup may return a cleanup,
always run after the case: a process holding the output's lock, a 64 KiB tmpfs), send a signal once the command's
output matches a pattern (``signal``: a scheduler's SIGTERM, a user's Ctrl-C), cap the memory a command may take
(``mem_mb``: YAML alias bombs), and run the CLI again from their check (a rerun after a failed preparation).

Every case runs in its own folder (the working directory of the command, with ``TMPDIR`` pointing at a
private empty folder), with ``HF_HUB_OFFLINE=1`` and ``MINITRON_CACHE`` at the user's cache (unless the case sets
it), so the embedded default model is reused. Fixtures are tiny (a random Llama with hidden 64, 2 layers and the
real SmolLM2 tokenizer, vocab 49152), so a command that gets as far as doing work takes seconds.

By default each case is a ``fork`` of a parent that has imported the CLI (``minitron_hf.cli.main(argv)``, with
exit codes and an uncaught exception's traceback reproduced as ``python -m minitron_hf.cli`` would): importing
torch/transformers/trl takes about 7 s per process on 2 cores, which would otherwise be most of the run.
``--mode subprocess`` runs ``python -m minitron_hf.cli`` for every case instead. The kill-and-resume
measurements always use real subprocesses (killed with SIGKILL).

    .venv/bin/python benchmarks/reliability.py              # everything, writes results/reliability.{md,json}
    .venv/bin/python benchmarks/reliability.py --list       # the cases, with what each should do
    .venv/bin/python benchmarks/reliability.py --only distill-nan   # some cases (kill-and-resume: --only kill)

With ``--only``, the results go to the work folder (kept), not to benchmarks/results. Each case folder keeps
the command's stdout/stderr next to it (``cases/NAME.stdout``, ``cases/NAME.stderr``) with ``--keep``/``--work``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from common import machine, revision

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import RESULTS  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

# placeholders in argv, env values and YAML: fixture paths and the case's own folder
#   {T} tiny teacher, {S} tiny student (same shapes, other seed), {V} tiny model with a vocabulary (1024) smaller than
#   its tokenizer's (49152), {DIST} a finished distill output folder, {RUN} a finished `minitron run` folder,
#   {D} the case folder, {DATA} a small local jsonl data file (400 documents), {SMALL} a smaller one (60),
#   {PREP} {SMALL} prepared by `minitron data prepare` with the tiny model's tokenizer
TOKENS = ("T", "S", "V", "DIST", "RUN", "D", "DATA", "SMALL", "PREP")

# The classes of input probed: a case's ``cls``, one row of the report's class table. The first ones group the
# cases of issue 16; the rest are the classes of issue 35 (a second probe, written from scratch, found 39 of 60
# cases wrong in classes the first never tried).
CLASSES = {
    "controls": "good input: each command must succeed (so that a refusal elsewhere is about the bad input)",
    "command line": "no command, an unknown command or an unknown global flag",
    "bad option values": "out-of-range, non-numeric or unknown option values: negative, zero, huge, bogus choices",
    "damaged or missing models": "model folders that are missing, files, empty, truncated, garbage, NaN, or lack a "
                                 "config, weights or tokenizer",
    "bad data and input files": "missing, empty, garbage or wrongly shaped data, scores, evaluation and preference "
                                "files",
    "output folders": "outputs that exist, are files, '.', /proc, the source, a parent of it or inside it",
    "bad config files": "broken, empty, binary or wrongly shaped YAML configs, --set overrides, corrupt run records",
    "divergence and resume": "NaN losses, resuming from missing or garbage checkpoints, reruns of finished runs",
    "input inside output": "an input (data file, blend source, scores, config, chat template, problems file, the "
                           "student checkpoint) lying inside the output folder, with --overwrite",
    "run stage folders": "`minitron run --overwrite` where a stage folder (out/prune, out/data, ...) holds the "
                         "user's files next to a config.json and no run records",
    "two commands at once": "a second command on an output another live process has locked (real concurrent "
                            "processes), and a stale lock left by a SIGKILLed one",
    "links and odd names": "outputs that are dangling links, links to user folders, 250-character names, names "
                           "with a newline, paths under a file",
    "caches": "MINITRON_CACHE set to a file, a path under a file, the empty string, a read-only mount; a local "
              "folder named like the embedded alias",
    "failed preparations": "`data prepare` of bad JSON, non-text fields, empty files, BOMs, fake parquet, a blend "
                           "missing a source (then the rerun on the fixed input), upper-case extensions, linked "
                           "subfolders; damaged prepared folders read by a command",
    "full disk": "outputs on a 64 KiB tmpfs (mounted by the probe; skipped where it cannot mount): refused up front "
                 "for the free space, or the write fails with ENOSPC mid-way, leaving nothing partial",
    "targets of the wrong type": "floats, bools and strings where a YAML config expects an integer",
    "models that do not match": "a model whose vocabulary is smaller than its tokenizer; resuming from a checkpoint "
                                "of another shape",
    "hostile YAML": "a YAML alias bomb (9 levels of 9) and a 20 MB YAML file",
    "signals": "SIGTERM during a run with --enable-jit-checkpoint, SIGINT (Ctrl-C) to a `data prepare` with worker "
               "processes",
}


def default_class(name: str, group: str) -> str:
    """The class of a case written before classes were named (issue 16), from its name."""
    if group == "cli":
        return "command line"
    if name.endswith("-ok"):
        return "controls"
    if re.search(r"-nan-lr|resume|rerun|done-json", name):
        return "divergence and resume"
    if re.search(r"-(model|teacher|student)-(missing|is-file|empty-dir|truncated|zero|garbage|no-|config-list|"
                 r"nan)|vocab-mismatch", name):
        return "damaged or missing models"
    if re.search(r"-output|-dry-run|overwrite-(source|parent)|-no-output|second-run", name):
        return "output folders"
    if re.search(r"-config|-yaml|run-set-|run-unknown|run-target-string", name):
        return "bad config files"
    if re.search(r"-data|-scores|-evaluation|rpo-(no-)?data", name):
        return "bad data and input files"
    return "bad option values"


@dataclass
class Case:
    name: str
    group: str  # the command, one row of the results table
    argv: list
    expect: str = "fail"  # fail | succeed | either
    setup: Callable | None = None  # setup(d: Path, fx: dict) -> None, or a cleanup() run after the case, always
    sentinels: tuple = ()  # paths relative to the case folder that must survive unchanged (created if absent)
    allow_new: tuple = ()  # globs (relative to the case folder) that a failure may leave
    check: Callable | None = None  # check(d, rc, stdout, stderr) -> list of problems
    timeout: float = 240
    why: str = ""
    cls: str = ""  # the class of input (a key of CLASSES); default: default_class(name, group)
    env: dict = field(default_factory=dict)  # environment of the command (placeholders allowed; None unsets)
    signal: tuple = ()  # (regex on the command's stdout+stderr, signal, delay s, to the process group): sent once
    stop_line: str = ""  # regex: a last stderr line that is clean too (a run stopped by a signal is no `error:`)
    mem_mb: int = 0  # the address space the command may add to what it has at start (hostile YAML); 0: no cap

    def __post_init__(self):
        self.cls = self.cls or default_class(self.name, self.group)
        assert self.cls in CLASSES, self.cls


class SkipCase(Exception):
    """Raised by a setup that cannot build its situation here (e.g. no tmpfs mount): the case is skipped."""


def sub(s, paths):
    s = str(s)
    for k in TOKENS:
        s = s.replace("{" + k + "}", paths[k])
    return s


# ---- setup helpers --------------------------------------------------------------------------------

def _copy_model(src, dst: Path):
    shutil.copytree(src, dst)
    return dst


def corrupt(path: Path, how: str):
    """Damage a model folder: truncate / zero / garbage the weights, or break its config."""
    st = path / "model.safetensors"
    if how == "truncate":
        data = st.read_bytes()
        st.write_bytes(data[: len(data) // 2])
    elif how == "zero-bytes":
        st.write_bytes(b"")
    elif how == "garbage-weights":
        st.write_bytes(os.urandom(4096))
    elif how == "garbage-config":
        (path / "config.json").write_text("{ this is not json ]]")
    elif how == "config-list":
        (path / "config.json").write_text("[1, 2, 3]")
    elif how == "no-config":
        (path / "config.json").unlink()
    elif how == "no-weights":
        st.unlink()
    elif how == "no-tokenizer":
        for f in path.iterdir():
            if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
                f.unlink()
    elif how == "nan-weights":
        # rewrite one norm weight's bytes as float32 NaN, through the safetensors header's offsets
        hdr_len = int.from_bytes(st.read_bytes()[:8], "little")
        raw = bytearray(st.read_bytes())
        header = json.loads(raw[8:8 + hdr_len])
        name = next(k for k in header if k != "__metadata__" and "norm" in k)
        b, e = header[name]["data_offsets"]
        nan = b"\x00\x00\xc0\x7f"  # float32 NaN, little endian
        raw[8 + hdr_len + b: 8 + hdr_len + e] = nan * ((e - b) // 4)
        st.write_bytes(bytes(raw))
    else:
        raise ValueError(how)
    return path


def model(rel="m", src="T", damage=None):
    """setup: a private copy of a fixture model at d/rel, optionally damaged."""
    def f(d, fx):
        p = _copy_model(fx[src], d / rel)
        if damage:
            corrupt(p, damage)
    return f


def files(**contents):
    """setup: write files (relative path -> text or bytes); '__' in a keyword stands for '/'."""
    def f(d, fx):
        for rel, text in contents.items():
            p = d / rel.replace("__", "/")
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):
                p.write_bytes(text)
            else:
                p.write_text(sub(text, fx_paths(fx, d)))
    return f


def chain(*fs):
    """setups one after another; the cleanups they return run in reverse order."""
    def f(d, fx):
        cleanups = []
        try:
            for g in fs:
                if g:
                    c = g(d, fx)
                    if callable(c):
                        cleanups.append(c)
        except BaseException:
            _run_cleanups(cleanups)
            raise
        return (lambda: _run_cleanups(cleanups)) if cleanups else None
    return f


def _run_cleanups(cleanups):
    for c in reversed(cleanups):
        try:
            c()
        except Exception:  # noqa: BLE001  a cleanup must not stop the others
            traceback.print_exc()


def mkdirs(*rels):
    def f(d, fx):
        for r in rels:
            (d / r).mkdir(parents=True, exist_ok=True)
    return f


def random_txt_dir(rel="junk", n=6):
    def f(d, fx):
        p = d / rel
        p.mkdir(parents=True)
        for i in range(n):
            (p / f"doc{i}.txt").write_bytes(os.urandom(2048))
    return f


def copy_fixture(key, rel):
    def f(d, fx):
        shutil.copytree(fx[key], d / rel, symlinks=True)
    return f


def fx_paths(fx, d):
    return {**{k: str(v) for k, v in fx.items()}, "D": str(d)}


def base_run_config(fx, out) -> dict:
    return {
        "output_dir": str(out), "teacher": str(fx["T"]), "data": "python-docs", "seq_len": 32, "eval_samples": 2,
        "report_to": "none",
        "prune": {"target": {"hidden_size": 32, "intermediate_size": 64}, "calib_samples": 4, "val_samples": 2,
                  "batch_size": 2},
        "distill": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1,
                    "save_strategy": "steps", "save_steps": 1, "disable_tqdm": True},
        "evaluate": {"max_new_tokens": 4},
        "export": {"formats": ["hf"]},
    }


def run_yaml(change=None, raw=None, rel="run.yaml", out="out", teacher=None):
    """setup: a run config at d/rel whose output_dir is d/out. ``change(cfg)`` edits the dict; ``raw`` is the
    file's text verbatim instead."""
    def f(d, fx):
        import yaml

        p = d / rel
        if raw is not None:
            p.write_text(sub(raw, fx_paths(fx, d)))
            return
        cfg = base_run_config(fx, d / out if out is not None else None)
        if out is None:  # no output_dir key at all (str(None) would be a folder named 'None')
            cfg.pop("output_dir")
        if teacher:
            cfg["teacher"] = str(d / teacher)
        if change:
            change(cfg)
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return f


def set_(path, value):
    """change function for run_yaml: set cfg[a][b] = value for path 'a.b' (None value deletes)."""
    def f(cfg):
        keys = path.split(".")
        c = cfg
        for k in keys[:-1]:
            c = c.setdefault(k, {})
        if value is _DELETE:
            c.pop(keys[-1], None)
        else:
            c[keys[-1]] = value
    return f


_DELETE = object()


# ---- checks -------------------------------------------------------------------------------------

def _nonfinite(st: Path) -> bool | None:
    """True if a safetensors file holds a NaN/inf, None if it cannot be read. (numpy, not torch: this runs in the
    parent that forks the cases, which must not start torch's thread pool.)"""
    try:
        import numpy as np
        from safetensors.numpy import load_file

        return any(not np.isfinite(a).all() for a in load_file(str(st)).values())
    except Exception:
        return None


def _max_abs(st: Path) -> float | None:
    try:
        import numpy as np
        from safetensors.numpy import load_file

        return float(max(np.abs(a).max() for a in load_file(str(st)).values()))
    except Exception:
        return None


def check_nan(out_rel="out"):
    """After a diverging distillation: no checkpoint holds non-finite weights; a failure names a checkpoint
    (existing, finite) to resume from, or says that none exists."""
    def f(d, rc, stdout, stderr):
        problems = []
        out = d / out_rel
        for st in sorted(out.rglob("model.safetensors")) if out.exists() else []:
            bad = _nonfinite(st)
            if bad:
                problems.append(f"non-finite weights kept in {st.parent.relative_to(d)}")
            elif bad is None:
                problems.append(f"unreadable weights in {st.parent.relative_to(d)}")
        if rc != 0:
            last = error_line(stderr)
            ok = False
            for n in re.findall(r"[\w./-]*checkpoint-\d+", last):
                for p in (Path(n), d / n, out / n):  # absolute, relative to the working folder, or to out
                    if (p / "model.safetensors").exists() and _nonfinite(p / "model.safetensors") is False:
                        ok = True
            if not ok and "no checkpoint" not in last.lower():
                problems.append("the message names no checkpoint with finite weights")
        return problems
    return f


# ---- setups and checks of the classes of issue 35 ------------------------------------------------

RUNTIME: dict = {}  # set by run_cases (env, mode, project, fx, work): setups and checks that run commands use it


def run_cli(argv, d: Path, name: str, timeout: float = 180) -> tuple:
    """Run the CLI once more in the case folder ``d`` (a check's rerun), the way the cases run (forked or a
    subprocess); (exit code, stdout, stderr), also kept as ``cases/CASE.NAME.stdout/.stderr``."""
    tmp = RUNTIME["work"] / "tmp" / f"{d.name}.{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    out_path, err_path = d.parent / f"{d.name}.{name}.stdout", d.parent / f"{d.name}.{name}.stderr"
    argv = [sub(a, fx_paths(RUNTIME["fx"], d)) for a in argv]
    if RUNTIME["mode"] == "subprocess":
        with open(out_path, "wb") as o, open(err_path, "wb") as e:
            p = subprocess.Popen(cli_cmd(RUNTIME["project"]) + argv, cwd=d, env=dict(RUNTIME["env"], TMPDIR=str(tmp)),
                                 stdout=o, stderr=e, stdin=subprocess.DEVNULL, start_new_session=True)
        pid = p.pid
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            rc = p.wait()
    else:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(argv, d, tmp, out_path, err_path, 1)
        deadline = time.time() + timeout
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                break
            time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return rc, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")


HOLDER_CODE = ("import sys, time\n"
               "from minitron_hf.outputs import check_output, command_scope\n"
               "with command_scope():\n"
               "    check_output(sys.argv[1], 'output', overwrite=True)\n"
               "    print('locked', flush=True)\n"
               "    time.sleep(120)\n")
HOLDERS: dict = {}  # case folder -> the Popen of the process holding a lock for it


def lock_holder(rel="out", stale=False):
    """setup: another live process takes the lock of d/rel the way every command does (``command_scope`` +
    ``check_output``), says 'locked' and sleeps; the case's command runs while it holds the lock. Its cleanup
    interrupts it (SIGINT: it releases the lock and removes the lock file), then kills it. ``stale``: it is
    SIGKILLed before the case runs, so its lock file stays behind while the kernel has released the flock."""
    def f(d, fx):
        import selectors

        p = subprocess.Popen([sys.executable, "-c", HOLDER_CODE, str(d / rel)], cwd=d, env=RUNTIME["env"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                             start_new_session=True)
        HOLDERS[str(d)] = p

        def cleanup():
            if HOLDERS.get(str(d)) is p:
                del HOLDERS[str(d)]
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            p.stdout.close()
            p.stderr.close()

        line = ""
        with selectors.DefaultSelector() as sel:
            sel.register(p.stdout, selectors.EVENT_READ)
            deadline = time.time() + 60
            while time.time() < deadline and p.poll() is None and not line:
                if sel.select(timeout=0.5):
                    line = p.stdout.readline()
        if line.strip() != "locked":
            if p.poll() is None:
                p.kill()
            p.wait()
            err = p.stderr.read()
            cleanup()
            raise RuntimeError(f"the lock holder did not take the lock: {last_line(err) or line or 'no output'}")
        if stale:
            p.kill()
            p.wait()
        return cleanup
    return f


def _unmount(p: Path):
    subprocess.run(["umount", "-l", str(p)], capture_output=True)


def tmpfs(rel="small", size="64k"):
    """setup: a ``size`` tmpfs mounted at d/rel (we are root in a container); where mounting fails, the case is
    skipped (a full disk is not simulated), never failed. The cleanup unmounts it."""
    def f(d, fx):
        p = d / rel
        p.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(p)],
                               capture_output=True, text=True, timeout=30)
            err = "" if r.returncode == 0 else (last_line(r.stderr) or f"exit {r.returncode}")
        except (OSError, subprocess.SubprocessError) as e:
            err = repr(e)
        if err:
            raise SkipCase(f"cannot mount a {size} tmpfs here ({err}); a full disk is not simulated")
        return lambda: _unmount(p)
    return f


def copy_file(key, rel):
    """setup: a copy of the fixture file ``key`` at d/rel."""
    def f(d, fx):
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(fx[key], p)
    return f


def link(rel, target):
    """setup: d/rel is a symbolic link to ``target`` (relative to d/rel's folder, or absolute)."""
    def f(d, fx):
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    return f


def _doc_text(tag, i):
    return f"{tag} document {i}. " + " ".join(f"Line {j} of {tag} {i} says that code reads files and writes "
                                             f"tokens." for j in range(12))


def docs_jsonl(n, tag="doc", field_name="text") -> str:
    """n distinct documents, one JSON object a line."""
    return "".join(json.dumps({field_name: _doc_text(tag, i)}) + "\n" for i in range(n))


def padded(rel, head, mb=20):
    """setup: the text ``head`` (placeholders filled) then comment lines up to ``mb`` MB, at d/rel."""
    def f(d, fx):
        (d / rel).write_text(sub(head, fx_paths(fx, d)) + ("# " + "x" * 77 + "\n") * (mb * 2**20 // 80))
    return f


def write_parquet(rel, n=20, tag="pq"):
    """setup (or fix): a real parquet file of n documents at d/rel."""
    def f(d, fx):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [_doc_text(tag, i) for i in range(n)]}), str(d / rel))
    return f


def damage_prepared(rel, how):
    """setup: damage the prepared folder d/rel: manifest.json a list, a split entry a number, or every .bin shard
    overwritten with the same number of other bytes (0xFFFF token ids, beyond the 49152-token vocabulary)."""
    def f(d, fx):
        p = d / rel
        if how == "manifest-list":
            (p / "manifest.json").write_text("[1, 2, 3]\n")
        elif how == "split-number":
            m = json.loads((p / "manifest.json").read_text())
            m["splits"]["calibration"] = 5
            m["splits"]["validation"] = 5
            (p / "manifest.json").write_text(json.dumps(m, indent=1))
        elif how == "bin-other-bytes":
            for b in p.glob("*.bin"):
                b.write_bytes(b"\xff" * b.stat().st_size)
        else:
            raise ValueError(how)
    return f


def _checks(*fs):
    def f(d, rc, stdout, stderr):
        return [x for g in fs if g for x in g(d, rc, stdout, stderr)]
    return f


def check_names(*words):
    """A refusal's message names each of ``words`` (case-insensitive; a tuple: any of them): it failed for the
    reason the case is about, not another."""
    def f(d, rc, stdout, stderr):
        if rc == 0:
            return []
        line = error_line(stderr).lower()
        problems = []
        for w in words:
            alts = w if isinstance(w, tuple) else (w,)
            if not any(a.lower() in line for a in alts):
                problems.append(f"the message does not name {' or '.join(repr(a) for a in alts)} (refused for "
                                f"another reason?)")
        return problems
    return f


def check_holder_named(d, rc, stdout, stderr):
    """The refusal names the PID of the process that holds the lock."""
    p = HOLDERS.get(str(d))
    if rc == 0 or p is None:
        return []
    return [] if f"PID {p.pid}" in error_line(stderr) else [f"the message does not name the holder (PID {p.pid})"]


def check_stale_taken_over(d, rc, stdout, stderr):
    """A stale lock (its holder SIGKILLed) is taken over, with a warning naming the gone holder."""
    p = HOLDERS.get(str(d))
    if rc != 0 or p is None:
        return []
    return [] if str(p.pid) in stderr else [f"no warning names the stale lock's holder (PID {p.pid})"]


def check_rerun(argv, fix, done="out/manifest.json"):
    """After a refused `data prepare`: ``fix(d, fx)`` repairs the input; the same command must then succeed and
    write ``done`` (a failed first preparation may leave nothing that refuses the rerun)."""
    def f(d, rc, stdout, stderr):
        if rc == 0:
            return []
        fix(d, RUNTIME["fx"])
        rc2, _, err2 = run_cli(argv, d, "rerun")
        if rc2 == 0 and (d / done).exists():
            return []
        return [f"the rerun on the fixed input failed (exit {rc2}): {error_line(err2)[:300]}"]
    return f


def check_documents(n, rel="out", or_named=None):
    """A successful preparation read all ``n`` documents (manifest's documents.read), or names what it skipped."""
    def f(d, rc, stdout, stderr):
        if rc != 0:
            return []
        try:
            read = json.loads((d / rel / "manifest.json").read_text())["documents"]["read"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return [f"no readable {rel}/manifest.json ({e!r})"]
        if read == n or (or_named and or_named in stdout + stderr):
            return []
        return [f"{read} of the {n} documents were read, without a word" + (f" about {or_named!r}" if or_named
                                                                              else "")]
    return f


def check_link_kept(rel="out", target="user"):
    """d/rel is still the link it was, no ``.old-*``/``.tmp-*`` sibling is left anywhere, and a refusal is about the
    link."""
    def f(d, rc, stdout, stderr):
        problems = check_names("link")(d, rc, stdout, stderr)
        p = d / rel
        if not p.is_symlink() or os.readlink(p) != target:
            problems.append(f"{rel} is no longer the link to {target}")
        debris = sorted(str(q.relative_to(d)) for pat in (".old-*", ".tmp-*") for q in d.rglob(pat))
        if debris:
            problems.append("left " + ", ".join(debris))
        return problems
    return f


def check_pruned_from_local(rel="out"):
    """prune --model smollm2-135m with a local folder of that name: the local (tiny) model was pruned, not the
    embedded SmolLM2-135M (30 layers, intermediate 1536)."""
    def f(d, rc, stdout, stderr):
        if rc != 0:
            return []
        try:
            cfg = json.loads((d / rel / "config.json").read_text())
        except (OSError, ValueError) as e:
            return [f"no readable {rel}/config.json ({e!r})"]
        got = (cfg.get("num_hidden_layers"), cfg.get("intermediate_size"))
        if got != (2, 128):
            return [f"the output has {got[0]} layers and intermediate_size {got[1]}: not the local folder's model "
                    f"(2 layers, 128), the embedded one's (30, 1536)"]
        return []
    return f


def check_preempted(rel="out"):
    """A SIGTERMed training run (``--enable-jit-checkpoint``): its stderr names a saved checkpoint to resume from
    (its exit code must not be 0: a silent success otherwise)."""
    def f(d, rc, stdout, stderr):
        if rc == 0:
            return []
        for n in re.findall(r"[\w./-]*checkpoint-\d+", stderr):
            for p in (Path(n), d / n, d / rel / Path(n).name):
                if (p / "trainer_state.json").exists() or (p / "model.safetensors").exists():
                    return []
        return ["stderr names no saved checkpoint to resume from"]
    return f


def check_exit(code):
    def f(d, rc, stdout, stderr):
        return [] if rc in (0, code) else [f"exit {rc}, not {code}"]
    return f


def yaml_bomb(key, head="", levels=9, width=9) -> str:
    """A 'billion laughs' YAML: ``head``, then ``key`` (``section.key`` nests under ``section:``) set to the list of
    the levels ``&a0 [lol x width]``, ``&ai [*a(i-1) x width]``: width**levels leaves from a few hundred bytes, all
    in the value of the first option a command reads (whatever walks or prints it expands the whole bomb)."""
    sec, _, k = key.rpartition(".")
    items = [f"&a0 [{', '.join(['lol'] * width)}]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]"
                                                       for i in range(1, levels)]
    return head + (f"{sec}:\n  " if sec else "") + f"{k}: [{', '.join(items)}]\n"


# ---- the list -----------------------------------------------------------------------------------

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
EVALUATE = ["evaluate", "{T}", "--samples", "2", "--seq-len", "32"]
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


def cases() -> list[Case]:
    C = []

    def add(name, group, argv, **kw):
        C.append(Case(name, group, list(argv), **kw))

    # ---------------- top level
    add("cli-no-command", "cli", [])
    add("cli-unknown-command", "cli", ["frobnicate"])
    add("cli-unknown-global-flag", "cli", ["--frobnicate", "prune"])
    add("cli-eval-no-suite", "cli", ["eval"])
    add("cli-export-no-format", "cli", ["export"])
    add("cli-align-no-method", "cli", ["align"])

    # ---------------- prune
    g = "prune"
    add("prune-ok", g, PRUNE, expect="succeed")
    add("prune-unknown-flag", g, PRUNE + ["--frobnicate", "1"])
    add("prune-seq-len-abc", g, opt(PRUNE, "--seq-len", "abc"))
    add("prune-seq-len-neg", g, opt(PRUNE, "--seq-len", "-1"))
    add("prune-seq-len-0", g, opt(PRUNE, "--seq-len", "0"))
    add("prune-seq-len-huge", g, opt(PRUNE, "--seq-len", "100000"), why="beyond max_position_embeddings")
    add("prune-calib-samples-0", g, opt(PRUNE, "--calib-samples", "0"))
    add("prune-calib-samples-neg", g, opt(PRUNE, "--calib-samples", "-3"))
    add("prune-batch-size-0", g, opt(PRUNE, "--batch-size", "0"))
    add("prune-val-samples-neg", g, opt(PRUNE, "--val-samples", "-1"))
    add("prune-no-target", g, opt(PRUNE, "--target", drop=True))
    add("prune-target-unknown-key", g, opt(PRUNE, "--target", "foo=1"))
    add("prune-target-zero", g, opt(PRUNE, "--target", "hidden_size=0"))
    add("prune-target-huge", g, opt(PRUNE, "--target", "hidden_size=100000"))
    add("prune-target-negative", g, opt(PRUNE, "--target", "hidden_size=-8"))
    add("prune-target-not-int", g, opt(PRUNE, "--target", "hidden_size=abc"))
    add("prune-target-no-equals", g, opt(PRUNE, "--target", "hidden_size"))
    add("prune-target-float", g, opt(PRUNE, "--target", "hidden_size=31.5"))
    add("prune-target-layers-0", g, opt(PRUNE, "--target", "num_hidden_layers=0"))
    add("prune-target-layers-more", g, opt(PRUNE, "--target", "num_hidden_layers=5"), why="the model has 2 layers")
    add("prune-target-heads-not-divisor", g, opt(PRUNE, "--target", "num_attention_heads=3"),
        why="4 query heads in 2 KV groups")
    add("prune-importance-bogus", g, PRUNE + ["--importance", "bogus"])
    add("prune-depth-metric-bogus", g, PRUNE + ["--depth-metric", "bogus"])
    add("prune-dtype-bad-choice", g, PRUNE + ["--dtype", "int8"])
    add("prune-device-bogus", g, PRUNE + ["--device", "bogus"])
    add("prune-overwrite-not-bool", g, PRUNE + ["--overwrite", "maybe"])
    add("prune-iterative-steps-0", g, PRUNE + ["--iterative-steps", "0"])
    add("prune-max-shard-0", g, PRUNE + ["--max-shard-size-mb", "0"], expect="either",
        why="0 MB shards: one tensor per shard, or refused")
    add("prune-max-shard-neg", g, PRUNE + ["--max-shard-size-mb", "-1"])
    add("prune-validation-fraction-1.5", g, PRUNE + ["--validation-fraction", "1.5"])
    add("prune-model-missing", g, opt(PRUNE, "--model", "nope"))
    add("prune-model-is-file", g, opt(PRUNE, "--model", "{T}/config.json"))
    add("prune-model-empty-dir", g, opt(PRUNE, "--model", "empty"), setup=mkdirs("empty"))
    add("prune-model-truncated-weights", g, PRUNE_M, setup=model(damage="truncate"), sentinels=("m",))
    add("prune-model-zero-byte-weights", g, PRUNE_M, setup=model(damage="zero-bytes"), sentinels=("m",))
    add("prune-model-garbage-weights", g, PRUNE_M, setup=model(damage="garbage-weights"), sentinels=("m",))
    add("prune-model-no-weights", g, PRUNE_M, setup=model(damage="no-weights"), sentinels=("m",))
    add("prune-model-garbage-config", g, PRUNE_M, setup=model(damage="garbage-config"), sentinels=("m",))
    add("prune-model-config-list", g, PRUNE_M, setup=model(damage="config-list"), sentinels=("m",))
    add("prune-model-no-tokenizer", g, PRUNE_M, setup=model(damage="no-tokenizer"), sentinels=("m",))
    add("prune-data-missing", g, PRUNE + ["--data", "nope.jsonl"])
    add("prune-data-empty-file", g, PRUNE + ["--data", "empty.txt"], setup=files(**{"empty.txt": ""}))
    add("prune-data-empty-jsonl", g, PRUNE + ["--data", "empty.jsonl"], setup=files(**{"empty.jsonl": ""}))
    add("prune-data-empty-dir", g, PRUNE + ["--data", "empty"], setup=mkdirs("empty"))
    add("prune-data-random-bytes-txt", g, PRUNE + ["--data", "junk"], setup=random_txt_dir())
    add("prune-data-garbage-jsonl", g, PRUNE + ["--data", "bad.jsonl"], setup=files(**{"bad.jsonl": "{not json\n"}))
    add("prune-data-wrong-text-field", g, PRUNE + ["--data", "{DATA}", "--text-field", "nope"])
    add("prune-data-too-little", g, PRUNE + ["--data", "tiny.jsonl"],
        setup=files(**{"tiny.jsonl": '{"text": "hi"}\n'}), why="one 1-token document")
    add("prune-output-nonempty", g, PRUNE, setup=files(**{"out__notes.txt": "mine"}), sentinels=("out/notes.txt",))
    add("prune-output-is-file", g, PRUNE, sentinels=("out",))
    add("prune-output-dot", g, opt(PRUNE, "--output", "."), sentinels=("notes.txt",))
    add("prune-output-dot-overwrite", g, opt(PRUNE, "--output", ".") + ["--overwrite"], sentinels=("notes.txt",))
    add("prune-output-proc", g, opt(PRUNE, "--output", "/proc/minitron-x"))
    add("prune-output-sys", g, opt(PRUNE, "--output", "/sys/minitron-x"))
    add("prune-overwrite-parent-of-source", g,
        ["prune", "--model", "runs/m", "--output", "runs", "--overwrite", "--target", "hidden_size=32",
         "--calib-samples", "4", "--seq-len", "32", "--batch-size", "2", "--val-samples", "2"],
        setup=model("runs/m"), sentinels=("runs/m", "runs/notes.txt"))
    add("prune-overwrite-source", g, opt(PRUNE_M, "--output", "m") + ["--overwrite"], setup=model(),
        sentinels=("m",))
    add("prune-output-inside-source", g, opt(PRUNE_M, "--output", "m/pruned"), setup=model(), sentinels=("m",))
    add("prune-scores-missing", g, PRUNE + ["--scores", "nope"])
    add("prune-scores-garbage", g, PRUNE + ["--scores", "scores"],
        setup=files(**{"scores__importance.safetensors": b"\x00garbage" * 64}))
    add("prune-config-missing", g, PRUNE + ["--config", "nope.yaml"])
    add("prune-config-broken-yaml", g, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": "model: {T}\ntarget: {hidden_size: 32\n  output: [out\n"}))
    add("prune-config-unknown-key", g, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": "model: {T}\noutput: out\ntarget: {hidden_size: 32}\ncalib_sample: 4\n"}))
    add("prune-config-list", g, ["prune", "--config", "p.yaml"], setup=files(**{"p.yaml": "- 1\n- 2\n"}))
    add("prune-config-target-string", g, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": 'model: {T}\noutput: out\ntarget: "hidden_size=32"\ncalib_samples: 4\nseq_len: 32\n'
                                 'val_samples: 2\n'}))
    add("prune-config-batch-size-float", g, ["prune", "--config", "p.yaml"],
        setup=files(**{"p.yaml": "model: {T}\noutput: out\ntarget: {hidden_size: 32}\ncalib_samples: 4\n"
                                 "seq_len: 32\nbatch_size: 4.5\nval_samples: 2\n"}))

    # ---------------- importance
    g = "importance"
    add("importance-ok", g, IMPORTANCE, expect="succeed")
    add("importance-calib-samples-0", g, opt(IMPORTANCE, "--calib-samples", "0"))
    add("importance-block-size-too-big", g, IMPORTANCE + ["--block-size", "5"], why="the model has 2 layers")
    add("importance-block-size-neg", g, IMPORTANCE + ["--block-size", "-1"])
    add("importance-bogus-metric", g, IMPORTANCE + ["--importance", "bogus"])
    add("importance-model-missing", g, opt(IMPORTANCE, "--model", "nope"))
    add("importance-model-truncated", g, opt(IMPORTANCE, "--model", "m"), setup=model(damage="truncate"))
    add("importance-output-nonempty", g, IMPORTANCE, setup=files(**{"out__keep.txt": "mine"}),
        sentinels=("out/keep.txt",))
    add("importance-output-proc", g, opt(IMPORTANCE, "--output", "/proc/minitron-x"))
    add("importance-no-output", g, opt(IMPORTANCE, "--output", drop=True), expect="either")

    # ---------------- search
    g = "search"
    add("search-budget-0", g, opt(SEARCH, "--budget", "0"))
    add("search-budget-neg", g, opt(SEARCH, "--budget", "-1"))
    add("search-budget-above-model", g, opt(SEARCH, "--budget", "1e12"))
    add("search-budget-abc", g, opt(SEARCH, "--budget", "abc"))
    add("search-top-k-0", g, opt(SEARCH, "--top-k", "0"))
    add("search-multiple-0", g, SEARCH + ["--multiple", "0"])
    add("search-max-width-prune-2", g, SEARCH + ["--max-width-prune", "2"])
    add("search-model-missing", g, opt(SEARCH, "--model", "nope"))
    add("search-output-proc", g, opt(SEARCH, "--output", "/proc/minitron-x"))
    add("search-output-nonempty", g, SEARCH, setup=files(**{"out__keep.txt": "mine"}), sentinels=("out/keep.txt",))

    # ---------------- distill
    g = "distill"
    add("distill-ok", g, DISTILL, expect="succeed")
    add("distill-nan-lr-1e6", g, opt(opt(DISTILL, "--learning-rate", "1e6"), "--max-steps", "4"), expect="either",
        allow_new=("out", "out/*"), check=check_nan(),
        why="may diverge: then it must stop, keep no non-finite checkpoint and name a finite one")
    add("distill-nan-lr-1e30", g, opt(opt(DISTILL, "--learning-rate", "1e30"), "--max-steps", "4"),
        allow_new=("out", "out/*"), check=check_nan(),
        why="diverges: must stop, keep no non-finite checkpoint and name a finite one")
    add("distill-nan-lr-1e30-progress-bar", g, opt(opt(opt(DISTILL, "--learning-rate", "1e30"), "--max-steps", "4"),
                                                  "--disable-tqdm", drop=True),
        allow_new=("out", "out/*"), check=check_nan(), why="as above, with the progress bar a user sees")
    add("distill-max-steps-neg", g, opt(DISTILL, "--max-steps", "-5"))
    add("distill-max-steps-0", g, opt(DISTILL, "--max-steps", "0"))
    add("distill-max-steps-abc", g, opt(DISTILL, "--max-steps", "abc"))
    add("distill-batch-size-0", g, opt(DISTILL, "--per-device-train-batch-size", "0"))
    add("distill-grad-accum-0", g, DISTILL + ["--gradient-accumulation-steps", "0"])
    add("distill-lr-neg", g, opt(DISTILL, "--learning-rate", "-1"), why="no empty output folder may be left")
    add("distill-lr-nan-string", g, opt(DISTILL, "--learning-rate", "nan"))
    add("distill-no-output-dir", g, opt(DISTILL, "--output-dir", drop=True))
    add("distill-output-dot", g, opt(DISTILL, "--output-dir", "."), sentinels=("notes.txt",), expect="either",
        why="a trainer's output_dir may be the current folder: it adds checkpoint-*/final/ there and deletes nothing")
    add("distill-output-proc", g, opt(DISTILL, "--output-dir", "/proc/minitron-x"))
    add("distill-output-is-student", g, opt(opt(DISTILL, "--student", "m"), "--output-dir", "m"), setup=model(),
        sentinels=("m",))
    add("distill-output-has-final", g, DISTILL, setup=copy_fixture("DIST", "out"), sentinels=("out",))
    add("distill-second-run-checkpoints-no-final", g, DISTILL,
        setup=chain(copy_fixture("DIST", "out"), lambda d, fx: (shutil.rmtree(d / "out/final"),
                                                                 (d / "out/distill.json").unlink(missing_ok=True))),
        sentinels=("out/checkpoint-1", "out/checkpoint-2"),
        why="a new run would overwrite the earlier run's checkpoints: refuse, or resume")
    add("distill-resume-true-fresh", g, DISTILL + ["--resume-from-checkpoint", "true"], expect="either",
        allow_new=("out", "out/*"), why="no checkpoint yet: start over or say so")
    add("distill-resume-missing-path", g, DISTILL + ["--resume-from-checkpoint", "nope/checkpoint-9"])
    add("distill-resume-garbage-checkpoint", g, DISTILL + ["--resume-from-checkpoint", "ck"],
        setup=files(**{"ck__trainer_state.json": "{garbage", "ck__model.safetensors": b"\x00" * 10}), sentinels=("ck",))
    add("distill-no-student", g, opt(DISTILL, "--student", drop=True))
    add("distill-student-missing", g, opt(DISTILL, "--student", "nope"))
    add("distill-student-truncated", g, opt(DISTILL, "--student", "m"), setup=model(damage="truncate"),
        sentinels=("m",))
    add("distill-student-nan-weights", g, opt(DISTILL, "--student", "m"), setup=model(damage="nan-weights"),
        sentinels=("m",), why="non-finite weights in the student")
    add("distill-student-garbage-config", g, opt(DISTILL, "--student", "m"), setup=model(damage="garbage-config"))
    add("distill-teacher-garbage-config", g, opt(DISTILL, "--teacher", "m"), setup=model(damage="garbage-config"))
    add("distill-teacher-truncated", g, opt(DISTILL, "--teacher", "m"), setup=model(damage="truncate"))
    add("distill-vocab-mismatch", g, opt(DISTILL, "--student", "{V}"))
    add("distill-seq-len-1", g, opt(DISTILL, "--seq-len", "1"))
    add("distill-seq-len-huge", g, opt(DISTILL, "--seq-len", "100000"))
    add("distill-eval-samples-0", g, opt(DISTILL, "--eval-samples", "0"))
    add("distill-kd-loss-bogus", g, DISTILL + ["--kd-loss", "bogus"])
    add("distill-temperature-0", g, DISTILL + ["--temperature", "0"])
    add("distill-temperature-neg", g, DISTILL + ["--temperature", "-1"])
    add("distill-lr-scheduler-kwargs-bad-json", g, DISTILL + ["--lr-scheduler-kwargs", "{min_lr: oops"])
    add("distill-lr-scheduler-bogus", g, DISTILL + ["--lr-scheduler-type", "bogus"])
    add("distill-save-steps-0", g, opt(DISTILL, "--save-steps", "0"))
    add("distill-warmup-neg", g, DISTILL + ["--warmup-steps", "-1"])
    add("distill-model-dtype-bad", g, DISTILL + ["--model-dtype", "int8"])
    add("distill-data-random-bytes-txt", g, DISTILL + ["--data", "junk"], setup=random_txt_dir())
    add("distill-optim-bogus", g, DISTILL + ["--optim", "bogus"])

    # ---------------- correct-teacher
    g = "correct-teacher"
    add("correct-ok", g, CORRECT, expect="succeed")
    add("correct-mode-bogus", g, CORRECT + ["--mode", "bogus"])
    add("correct-lora-r-0", g, CORRECT + ["--mode", "lora", "--lora-r", "0"])
    add("correct-max-steps-neg", g, opt(CORRECT, "--max-steps", "-5"))
    add("correct-model-missing", g, opt(CORRECT, "--model", "nope"))
    add("correct-model-truncated", g, opt(CORRECT, "--model", "m"), setup=model(damage="truncate"))
    add("correct-output-proc", g, opt(CORRECT, "--output-dir", "/proc/minitron-x"))
    add("correct-no-output-dir", g, opt(CORRECT, "--output-dir", drop=True))
    add("correct-lr-neg", g, CORRECT + ["--learning-rate", "-1"])

    # ---------------- run
    g = "run"
    add("run-rerun-finished-skips", g, ["run", "run/run.yaml"], expect="succeed",
        setup=lambda d, fx: _copy_run(d, fx), timeout=300)
    add("run-output-has-unrelated-files", g, ["run", "run.yaml"], expect="either", setup=run_yaml(),
        sentinels=("out/distill/notes.txt", "out/export/important.txt", "out/report.md"), timeout=400,
        why="an output_dir that holds files this run did not write")
    add("run-distill-max-steps-neg", g, ["run", "run.yaml"], setup=run_yaml(set_("distill.max_steps", -5)))
    add("run-distill-max-steps-0", g, ["run", "run.yaml"], setup=run_yaml(set_("distill.max_steps", 0)))
    add("run-distill-max-steps-list", g, ["run", "run.yaml"], setup=run_yaml(set_("distill.max_steps", [2])))
    add("run-lr-scheduler-kwargs-list", g, ["run", "run.yaml"],
        setup=run_yaml(set_("distill.lr_scheduler_kwargs", [1, 2])))
    add("run-prune-batch-size-float", g, ["run", "run.yaml"], setup=run_yaml(set_("prune.batch_size", 4.5)))
    add("run-distill-batch-size-float", g, ["run", "run.yaml"],
        setup=run_yaml(set_("distill.per_device_train_batch_size", 4.5)))
    add("run-distill-batch-size-0", g, ["run", "run.yaml"],
        setup=run_yaml(set_("distill.per_device_train_batch_size", 0)))
    add("run-broken-yaml", g, ["run", "run.yaml"],
        setup=run_yaml(raw="output_dir: {D}/out\nteacher: {T}\nprune:\n  target: {hidden_size: 32\n distill: [\n"))
    add("run-yaml-tabs", g, ["run", "run.yaml"], setup=run_yaml(raw="output_dir: {D}/out\n\tteacher: {T}\n"))
    add("run-yaml-empty", g, ["run", "run.yaml"], setup=run_yaml(raw=""))
    add("run-yaml-list", g, ["run", "run.yaml"], setup=run_yaml(raw="- a\n- b\n"))
    add("run-yaml-binary", g, ["run", "run.yaml"], setup=files(**{"run.yaml": os.urandom(512)}))
    add("run-config-missing", g, ["run", "nope.yaml"])
    add("run-config-is-dir", g, ["run", "cfgdir"], setup=mkdirs("cfgdir"))
    add("run-no-output-dir", g, ["run", "run.yaml"], setup=run_yaml(out=None))
    add("run-unknown-top-key", g, ["run", "run.yaml"], setup=run_yaml(set_("frobnicate", 1)))
    add("run-unknown-section-key", g, ["run", "run.yaml"], setup=run_yaml(set_("distill.max_step", 2)))
    add("run-target-string", g, ["run", "run.yaml"], setup=run_yaml(set_("prune.target", "hidden_size=32")))
    add("run-target-huge", g, ["run", "run.yaml"], setup=run_yaml(set_("prune.target", {"hidden_size": 100000})))
    add("run-target-unknown-key", g, ["run", "run.yaml"], setup=run_yaml(set_("prune.target", {"foo": 1})))
    add("run-seq-len-neg", g, ["run", "run.yaml"], setup=run_yaml(set_("seq_len", -1)))
    add("run-export-format-bogus", g, ["run", "run.yaml"], setup=run_yaml(set_("export.formats", ["bogus"])))
    add("run-data-missing", g, ["run", "run.yaml"], setup=run_yaml(set_("data", "nope.jsonl")))
    add("run-output-dot", g, ["run", "run.yaml"], setup=run_yaml(out="."), sentinels=("notes.txt",))
    add("run-output-proc", g, ["run", "run.yaml"], setup=run_yaml(set_("output_dir", "/proc/minitron-x")))
    add("run-output-is-file", g, ["run", "run.yaml"], setup=run_yaml(), sentinels=("out",))
    add("run-teacher-missing", g, ["run", "run.yaml"], setup=run_yaml(set_("teacher", "nope")))
    add("run-teacher-truncated-weights", g, ["run", "run.yaml"],
        setup=chain(model(damage="truncate"), run_yaml(teacher="m")), sentinels=("m",))
    add("run-teacher-garbage-config", g, ["run", "run.yaml"],
        setup=chain(model(damage="garbage-config"), run_yaml(teacher="m")), sentinels=("m",))
    add("run-set-not-int", g, ["run", "run.yaml", "--set", "distill.max_steps=abc"], setup=run_yaml())
    add("run-set-no-equals", g, ["run", "run.yaml", "--set", "distill.max_steps"], setup=run_yaml())
    add("run-set-unknown-section", g, ["run", "run.yaml", "--set", "distil.max_steps=3"], setup=run_yaml())
    add("run-from-bogus", g, ["run", "run.yaml", "--from", "bogus"], setup=run_yaml())
    add("run-only-distill-fresh", g, ["run", "run.yaml", "--only", "distill"], setup=run_yaml(),
        why="its inputs (prune) do not exist yet")
    add("run-corrupt-done-json-rerun", g, ["run", "run/run.yaml"], expect="either",
        setup=lambda d, fx: (_copy_run(d, fx), (d / "run/out/prune/done.json").write_text('{"stage": "prune", "con')),
        sentinels=("run/out/importance",), timeout=300, why="rerun: redo the stage or say which file is corrupt")
    add("run-done-json-empty-rerun", g, ["run", "run/run.yaml"], expect="either",
        setup=lambda d, fx: (_copy_run(d, fx), (d / "run/out/distill/done.json").write_text("")), timeout=300)
    add("run-resume-config-json-garbage", g, ["run", "run/run.yaml"], expect="either",
        setup=lambda d, fx: (_copy_run(d, fx), (d / "run/out/export/done.json").unlink(),
                             (d / "run/out/export/config.json").write_text("garbage")), timeout=300)

    # ---------------- publish (always --dry-run: nothing is uploaded)
    g = "publish"
    add("publish-ok", g, PUBLISH, expect="succeed")
    add("publish-dry-run-nonempty", g, PUBLISH, setup=files(**{"up__keep.txt": "mine"}), sentinels=("up/keep.txt",))
    add("publish-dry-run-is-run-folder", g, ["publish", "run/export/hf", "--repo-id", "me/x", "--dry-run", "run"],
        setup=lambda d, fx: _copy_model(Path(fx["DIST"]) / "final", d / "run/export/hf"),
        sentinels=("run/report.md", "run/export/hf"), why="DIR is the run folder that holds MODEL")
    add("publish-dry-run-is-model", g, ["publish", "m", "--repo-id", "me/x", "--dry-run", "m"], setup=model(),
        sentinels=("m",))
    add("publish-dry-run-inside-model", g, ["publish", "m", "--repo-id", "me/x", "--dry-run", "m/up"],
        setup=model(), sentinels=("m",))
    add("publish-dry-run-dot", g, opt(PUBLISH, "--dry-run", "."), sentinels=("notes.txt",))
    add("publish-dry-run-proc", g, opt(PUBLISH, "--dry-run", "/proc/minitron-x"))
    add("publish-repo-id-no-namespace", g, opt(PUBLISH, "--repo-id", "x"))
    add("publish-repo-id-spaces", g, opt(PUBLISH, "--repo-id", "me/not a repo"))
    add("publish-repo-id-three-parts", g, opt(PUBLISH, "--repo-id", "a/b/c"))
    add("publish-repo-id-empty", g, opt(PUBLISH, "--repo-id", ""))
    add("publish-no-repo-id", g, opt(PUBLISH, "--repo-id", drop=True))
    add("publish-model-missing", g, ["publish", "nope", "--repo-id", "me/x", "--dry-run", "up"])
    add("publish-model-is-file", g, ["publish", "{T}/config.json", "--repo-id", "me/x", "--dry-run", "up"])
    add("publish-model-truncated-weights", g, ["publish", "m", "--repo-id", "me/x", "--dry-run", "up"],
        setup=model(damage="truncate"), sentinels=("m",))
    add("publish-model-garbage-config", g, ["publish", "m", "--repo-id", "me/x", "--dry-run", "up"],
        setup=model(damage="garbage-config"), sentinels=("m",))
    add("publish-model-no-weights", g, ["publish", "m", "--repo-id", "me/x", "--dry-run", "up"],
        setup=model(damage="no-weights"))
    add("publish-evaluation-missing", g, PUBLISH + ["--evaluation", "nope.json"])
    add("publish-evaluation-garbage", g, PUBLISH + ["--evaluation", "ev.json"], setup=files(**{"ev.json": "{oops"}))
    add("publish-evaluation-list", g, PUBLISH + ["--evaluation", "ev.json"], setup=files(**{"ev.json": "[1, 2]"}))
    add("publish-evaluation-wrong-shape", g, PUBLISH + ["--evaluation", "ev.json"],
        setup=files(**{"ev.json": '{"m": 3}'}))
    add("publish-evaluation-is-dir", g, PUBLISH + ["--evaluation", "evdir"], setup=mkdirs("evdir"))
    add("publish-relation-bogus", g, PUBLISH + ["--base-model-relation", "bogus"])
    add("publish-base-model-bad-id", g, PUBLISH + ["--base-model", "not a model id"])

    # ---------------- export fp8
    g = "export fp8"
    add("fp8-ok", g, FP8, expect="succeed")
    add("fp8-overwrite-parent-of-source", g,
        ["export", "fp8", "runs/m", "--output", "runs", "--overwrite", "--calib-samples", "2", "--seq-len", "32",
         "--batch-size", "2"], setup=model("runs/m"), sentinels=("runs/m", "runs/notes.txt"))
    add("fp8-overwrite-source", g, opt(FP8_M, "--output", "m") + ["--overwrite"], setup=model(), sentinels=("m",))
    add("fp8-output-proc", g, opt(FP8, "--output", "/proc/minitron-x"))
    add("fp8-output-sys", g, opt(FP8, "--output", "/sys/minitron-x"))
    add("fp8-output-dot", g, opt(FP8, "--output", "."), sentinels=("notes.txt",))
    add("fp8-output-nonempty", g, FP8, setup=files(**{"out__keep.txt": "mine"}), sentinels=("out/keep.txt",))
    add("fp8-model-truncated", g, FP8_M, setup=model(damage="truncate"), sentinels=("m",))
    add("fp8-model-garbage-config", g, FP8_M, setup=model(damage="garbage-config"), sentinels=("m",))
    add("fp8-model-missing", g, ["export", "fp8", "nope", "--output", "out"])
    add("fp8-calib-samples-0", g, opt(FP8, "--calib-samples", "0"))
    add("fp8-seq-len-neg", g, opt(FP8, "--seq-len", "-1"))
    add("fp8-batch-size-0", g, opt(FP8, "--batch-size", "0"))
    add("fp8-dtype-bad-choice", g, FP8 + ["--dtype", "int4"])
    add("fp8-no-output", g, opt(FP8, "--output", drop=True))

    # ---------------- export trtllm
    g = "export trtllm"
    add("trtllm-ok", g, TRT, expect="succeed")
    add("trtllm-lengths-garbage", g, opt(TRT, "--lengths", "abc"))
    add("trtllm-lengths-zero", g, opt(TRT, "--lengths", "0/0"))
    add("trtllm-batch-size-0", g, TRT + ["--batch-size", "0"])
    add("trtllm-num-requests-neg", g, opt(TRT, "--num-requests", "-1"))
    add("trtllm-mem-fraction-2", g, TRT + ["--kv-cache-free-gpu-memory-fraction", "2"])
    add("trtllm-tp-size-0", g, TRT + ["--tp-size", "0"])
    add("trtllm-model-missing", g, opt(TRT, "{T}", drop=True) + ["nope"])
    add("trtllm-model-garbage-config", g, ["export", "trtllm", "m", "--output", "out", "--run", "false"],
        setup=model(damage="garbage-config"))
    add("trtllm-output-nonempty", g, TRT, setup=files(**{"out__keep.txt": "mine"}), sentinels=("out/keep.txt",))
    add("trtllm-output-proc", g, opt(TRT, "--output", "/proc/minitron-x"))
    add("trtllm-output-is-model", g, ["export", "trtllm", "m", "--output", "m", "--overwrite", "--run", "false"],
        setup=model(), sentinels=("m",))

    # ---------------- eval humaneval / mbpp
    g = "eval humaneval"
    add("humaneval-ok", g, HUMANEVAL, expect="succeed")
    add("humaneval-model-truncated", g, ["eval", "humaneval", "m", "--limit", "1", "--max-new-tokens", "8"],
        setup=model(damage="truncate"))
    add("humaneval-model-missing", g, ["eval", "humaneval", "nope", "--limit", "1"])
    add("humaneval-limit-0", g, opt(HUMANEVAL, "--limit", "0"))
    add("humaneval-limit-neg", g, opt(HUMANEVAL, "--limit", "-1"))
    add("humaneval-samples-0", g, HUMANEVAL + ["--samples", "0"])
    add("humaneval-temperature-neg", g, HUMANEVAL + ["--temperature", "-1"])
    add("humaneval-top-p-2", g, HUMANEVAL + ["--top-p", "2"])
    add("humaneval-max-new-tokens-0", g, opt(HUMANEVAL, "--max-new-tokens", "0"))
    add("humaneval-names-count", g, HUMANEVAL + ["--names", "a", "b"])
    add("humaneval-output-proc", g, HUMANEVAL + ["--output", "/proc/minitron-x"])
    add("humaneval-output-nonempty", g, HUMANEVAL + ["--output", "res"], expect="either",
        setup=files(**{"res__keep.txt": "mine"}), sentinels=("res/keep.txt",))
    add("humaneval-timeout-0", g, HUMANEVAL + ["--timeout-s", "0"])
    g = "eval mbpp"
    add("mbpp-offline-no-data", g, MBPP, why="offline: the Hub dataset cannot be fetched")
    add("mbpp-data-files-missing", g, MBPP + ["--data-files", "nope.parquet"])
    add("mbpp-data-files-garbage", g, MBPP + ["--data-files", "m.jsonl"], setup=files(**{"m.jsonl": "{oops\n"}))
    add("mbpp-data-files-wrong-fields", g, MBPP + ["--data-files", "m.jsonl"],
        setup=files(**{"m.jsonl": '{"text": "hello"}\n'}))
    add("mbpp-split-bad-choice", g, MBPP + ["--split", "bogus"])
    add("mbpp-num-fewshot-neg", g, MBPP + ["--num-fewshot", "-1"])

    # ---------------- generate / evaluate
    g = "generate"
    add("generate-ok", g, GENERATE, expect="succeed")
    add("generate-model-missing", g, ["generate", "nope"])
    add("generate-model-truncated", g, ["generate", "m", "--max-new-tokens", "4"], setup=model(damage="truncate"))
    add("generate-model-garbage-config", g, ["generate", "m"], setup=model(damage="garbage-config"))
    add("generate-model-no-tokenizer", g, ["generate", "m", "--max-new-tokens", "4"],
        setup=model(damage="no-tokenizer"))
    add("generate-max-new-tokens-neg", g, opt(GENERATE, "--max-new-tokens", "-1"))
    add("generate-max-new-tokens-abc", g, opt(GENERATE, "--max-new-tokens", "abc"))
    add("generate-empty-prompt", g, GENERATE + ["--prompt", ""], expect="either")
    g = "evaluate"
    add("evaluate-ok", g, EVALUATE, expect="succeed")
    add("evaluate-model-missing", g, ["evaluate", "nope", "--samples", "2", "--seq-len", "32"])
    add("evaluate-model-truncated", g, ["evaluate", "m", "--samples", "2", "--seq-len", "32"],
        setup=model(damage="truncate"))
    add("evaluate-samples-0", g, opt(EVALUATE, "--samples", "0"))
    add("evaluate-seq-len-0", g, opt(EVALUATE, "--seq-len", "0"))
    add("evaluate-seq-len-huge", g, opt(EVALUATE, "--seq-len", "100000"))
    add("evaluate-data-missing", g, EVALUATE + ["--data", "nope.jsonl"])
    add("evaluate-data-random-bytes", g, EVALUATE + ["--data", "junk"], setup=random_txt_dir())
    add("evaluate-vocab-mismatch-model", g, ["evaluate", "{T}", "{V}", "--samples", "2", "--seq-len", "32"],
        expect="either",
        why="a model with another vocabulary than the first: refuse or evaluate each with its own tokenizer")

    # ---------------- align
    g = "align sft"
    add("sft-ok", g, SFT, expect="succeed")
    add("sft-data-missing", g, opt(SFT, "--data", "nope.jsonl"))
    add("sft-data-garbage", g, opt(SFT, "--data", "bad.jsonl"), setup=files(**{"bad.jsonl": "{oops\n"}))
    add("sft-data-builtin-bogus", g, opt(SFT, "--data", "builtin:bogus"))
    add("sft-max-samples-0", g, opt(SFT, "--max-samples", "0"))
    add("sft-model-missing", g, opt(SFT, "--model", "nope"))
    add("sft-output-proc", g, opt(SFT, "--output-dir", "/proc/minitron-x"))
    add("sft-max-steps-neg", g, opt(SFT, "--max-steps", "-5"))
    add("sft-output-nonempty", g, SFT, setup=files(**{"out__keep.txt": "mine"}), sentinels=("out/keep.txt",),
        expect="either")
    g = "align rpo"
    add("rpo-ok", g, RPO, expect="succeed", setup=files(**{"prefs.jsonl": PREFS}))
    add("rpo-data-missing", g, RPO)
    add("rpo-no-data", g, opt(RPO, "--data", drop=True))
    add("rpo-data-wrong-fields", g, RPO, setup=files(**{"prefs.jsonl": '{"text": "hi"}\n'}))
    add("rpo-data-no-rewards", g, RPO, setup=files(**{"prefs.jsonl": '{"prompt": "a", "chosen": "b", '
                                                                    '"rejected": "c"}\n'}))
    add("rpo-loss-bad-choice", g, RPO + ["--rpo-loss", "bogus"], setup=files(**{"prefs.jsonl": PREFS}))
    add("rpo-beta-neg", g, RPO + ["--beta", "-1"], setup=files(**{"prefs.jsonl": PREFS}))
    add("rpo-ref-model-missing", g, RPO + ["--ref-model", "nope"], setup=files(**{"prefs.jsonl": PREFS}))
    add("rpo-output-proc", g, opt(RPO, "--output-dir", "/proc/minitron-x"), setup=files(**{"prefs.jsonl": PREFS}))

    class_cases(add)
    return C


def prepare_argv(data, out="out"):
    return ["data", "prepare", "--data", data, "--output", out, "--tokenizer", "{T}"]


def _blend(*sources):
    return json.dumps([{"data": x, "weight": 1} for x in sources])


CHAT = "".join(json.dumps({"prompt": f"Say {w}.", "completion": f"{w}."}) + "\n" for w in ("yes", "maybe", "hi", "ok"))
CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MBPP_ROWS = "".join(json.dumps({"task_id": i, "text": f"Write a function add{i}(a, b) that returns a + b + {i}.",
                                "code": f"def add{i}(a, b):\n    return a + b + {i}",
                                "test_list": [f"assert add{i}(1, 2) == {3 + i}"], "test_setup_code": "",
                                "challenge_test_list": []}) + "\n" for i in (1, 2, 3, 11))
PRUNE_YAML = "model: {T}\noutput: out\ncalib_samples: 4\nseq_len: 32\nbatch_size: 2\nval_samples: 2\n"


def _copy_run_scores(rel):
    def f(d, fx):
        shutil.copytree(Path(fx["RUN"]) / "out" / "importance" / "scores", d / rel)
    return f


def _copy_other_shape_checkpoint(rel="ck"):
    """a checkpoint of the fixture run's pruned student (hidden 32, intermediate 64; the tiny models have 64, 128)"""
    def f(d, fx):
        shutil.copytree(Path(fx["RUN"]) / "out" / "distill" / "checkpoint-1", d / rel)
    return f


def class_cases(add):
    """The classes of issue 35, each a group of cases (see CLASSES)."""
    def case(cls):
        def f(name, group, argv, **kw):
            add(name, group, argv, cls=cls, **kw)
        return f

    # ---------------- an input lying inside the output folder
    a = case("input inside output")
    data_in = copy_file("SMALL", "out/data.jsonl")
    kept = ("out/data.jsonl", "out/notes.txt")
    a("inside-prune-data", "prune", PRUNE + ["--data", "out/data.jsonl", "--overwrite"], setup=data_in,
      sentinels=kept, check=check_names("data.jsonl"), why="--overwrite replaces out, which holds the data it reads")
    a("inside-importance-data", "importance", IMPORTANCE + ["--data", "out/data.jsonl", "--overwrite"], setup=data_in,
      sentinels=kept, check=check_names("data.jsonl"), why="--overwrite replaces out, which holds the data it reads")
    a("inside-fp8-data", "export fp8", FP8 + ["--data", "out/data.jsonl", "--overwrite"], setup=data_in,
      sentinels=kept, check=check_names("data.jsonl"), why="the calibration data lies inside the output")
    a("inside-prune-scores", "prune", PRUNE + ["--scores", "out/scores", "--overwrite"],
      setup=_copy_run_scores("out/scores"), sentinels=("out/scores", "out/notes.txt"), check=check_names("scores"),
      why="the importance scores folder it reads lies inside the output")
    a("inside-prune-config", "prune", ["prune", "--config", "out/p.yaml"],
      setup=files(**{"out/p.yaml": PRUNE_YAML + "overwrite: true\ntarget: {hidden_size: 32}\n"}),
      sentinels=("out/p.yaml", "out/notes.txt"), check=check_names("p.yaml"),
      why="the YAML config that names the output lies inside it (overwrite: true)")
    a("inside-prune-blend-source", "prune", PRUNE + ["--data", _blend("out/a.jsonl", "b.jsonl"), "--overwrite"],
      setup=chain(copy_file("SMALL", "out/a.jsonl"), copy_file("SMALL", "b.jsonl")),
      sentinels=("out/a.jsonl", "out/notes.txt"), check=check_names("a.jsonl"),
      why="one source of a blend lies inside the output")
    a("inside-data-prepare-source", "data prepare", prepare_argv("out/data.jsonl") + ["--overwrite"], setup=data_in,
      sentinels=kept, check=check_names("data.jsonl"), why="the source file lies inside the output folder")
    a("inside-data-prepare-blend-source", "data prepare", prepare_argv(_blend("out/a.jsonl", "b.jsonl"))
      + ["--overwrite"], setup=chain(copy_file("SMALL", "out/a.jsonl"), files(**{"b.jsonl": docs_jsonl(20, "b")})),
      sentinels=("out/a.jsonl", "out/notes.txt"), check=check_names("a.jsonl"),
      why="one source of a blend lies inside the output folder")
    a("inside-data-prepare-beside-ok", "data prepare", prepare_argv("data.jsonl", "prepared") + ["--overwrite"],
      expect="succeed", setup=copy_file("SMALL", "data.jsonl"), sentinels=("data.jsonl",),
      why="control: the source next to (not inside) the output")
    a("inside-distill-student-checkpoint", "distill",
      opt(opt(DISTILL, "--student", "out/checkpoint-1"), "--output-dir", "out") + ["--overwrite"],
      setup=copy_fixture("DIST", "out"), sentinels=("out/checkpoint-1",), check=check_names("checkpoint-1"),
      why="the student is a checkpoint of the output_dir the run writes its own checkpoint-1 into")
    a("inside-distill-data-in-final", "distill", DISTILL + ["--data", "out/final/data.jsonl", "--overwrite"],
      setup=chain(copy_fixture("DIST", "out"), copy_file("SMALL", "out/final/data.jsonl")),
      sentinels=("out/final/data.jsonl",), check=check_names("data.jsonl"),
      why="--overwrite replaces out/final, which holds the data")
    a("inside-distill-data-beside", "distill", DISTILL + ["--data", "out/data.jsonl", "--overwrite"],
      expect="either", setup=data_in, sentinels=kept,
      why="a trainer adds checkpoint-N/ and final/ to output_dir and replaces only those: data beside them may be "
          "refused or kept, never touched")
    a("inside-correct-data-in-final", "correct-teacher", CORRECT + ["--data", "out/final/data.jsonl", "--overwrite"],
      setup=copy_file("SMALL", "out/final/data.jsonl"), sentinels=("out/final/data.jsonl", "out/notes.txt"),
      check=check_names("data.jsonl"), why="--overwrite replaces out/final, which holds the data")
    a("inside-sft-data-in-final", "align sft", opt(SFT, "--data", "out/final/chat.jsonl") + ["--overwrite"],
      setup=files(**{"out/final/chat.jsonl": CHAT}), sentinels=("out/final/chat.jsonl",),
      check=check_names("chat.jsonl"), why="--overwrite replaces out/final, which holds the chat data")
    a("inside-sft-chat-template-in-final", "align sft", SFT + ["--chat-template", "out/final/t.jinja", "--overwrite"],
      setup=files(**{"out/final/t.jinja": CHATML_TEMPLATE}), sentinels=("out/final/t.jinja",),
      check=check_names("t.jinja"), why="--overwrite replaces out/final, which holds the chat template file")
    a("inside-mbpp-problems-file", "eval mbpp", MBPP + ["--data-files", "out/samples.jsonl", "--output", "out"],
      setup=files(**{"out/samples.jsonl": MBPP_ROWS}), sentinels=("out/samples.jsonl",),
      check=check_names("samples.jsonl"), why="the problems file is named like the completions file the results "
                                              "folder gets (samples.jsonl)")

    # ---------------- `minitron run --overwrite` and stage folders that hold the user's files
    a = case("run stage folders")
    user_prune = chain(run_yaml(), model("out/prune"), files(**{"out/prune/README.md": "my model\n"}))
    a("stage-prune-user-model", "run", ["run", "run.yaml", "--overwrite"], setup=user_prune,
      sentinels=("out/prune",), check=check_names("out/prune"), timeout=300,
      why="out/prune is the user's model (config.json, model.safetensors, tokenizer.json, README.md), no run records")
    a("stage-prune-user-model-no-overwrite", "run", ["run", "run.yaml"], setup=user_prune,
      sentinels=("out/prune",), timeout=300, why="the same without --overwrite (refused as not a run, or naming "
                                                 "out/prune)")
    a("stage-data-user-files", "run", ["run", "run.yaml", "--overwrite"],
      setup=chain(run_yaml(), files(**{"out/data/config.json": '{"mine": true}\n',
                                       "out/data/keep.jsonl": docs_jsonl(5, "keep")})),
      sentinels=("out/data",), check=check_names("out/data"), timeout=300,
      why="out/data holds the user's config.json and keep.jsonl, no run records")
    a("stage-importance-user-scores", "run", ["run", "run.yaml", "--overwrite"],
      setup=chain(run_yaml(), _copy_run_scores("out/importance/scores"),
                  files(**{"out/importance/config.json": '{"mine": true}\n'})),
      sentinels=("out/importance",), check=check_names("out/importance"), timeout=300,
      why="out/importance holds the user's scores and config.json, no run records")

    # ---------------- two commands at once: a live process holds the output's lock
    a = case("two commands at once")
    a("locked-prune", "prune", PRUNE, setup=lock_holder("out"), check=check_holder_named,
      why="another process holds the lock of out")
    a("locked-prune-inside", "prune", opt(PRUNE, "--output", "runs/a"), setup=lock_holder("runs"),
      check=check_holder_named, why="another process holds the lock of runs, around the output")
    a("locked-data-prepare", "data prepare", prepare_argv("{SMALL}"), setup=lock_holder("out"),
      check=check_holder_named, why="another process holds the lock of out")
    a("locked-distill", "distill", DISTILL, setup=lock_holder("out"), check=check_holder_named,
      why="another process holds the lock of out")
    a("locked-run", "run", ["run", "run.yaml"], setup=chain(run_yaml(), lock_holder("out")),
      check=check_holder_named, timeout=300, why="another process holds the lock of the run's output_dir")
    a("locked-stale-data-prepare", "data prepare", prepare_argv("{SMALL}"), expect="succeed",
      setup=lock_holder("out", stale=True), check=check_stale_taken_over,
      why="control: the holder was SIGKILLed, its lock file stays: taken over, with a warning naming its PID")

    # ---------------- outputs that are links or odd names
    a = case("links and odd names")
    a("link-dangling-prune", "prune", PRUNE, setup=link("out", "nowhere"), check=check_link_kept("out", "nowhere"),
      why="out is a link to a folder that does not exist")
    a("link-dangling-data-prepare", "data prepare", prepare_argv("{SMALL}"), setup=link("out", "nowhere"),
      check=check_link_kept("out", "nowhere"), why="out is a link to a folder that does not exist")
    to_user = chain(files(**{"user/keep.txt": "mine\n"}), link("out", "user"))
    a("link-to-user-folder-prune-overwrite", "prune", PRUNE + ["--overwrite"], setup=to_user,
      sentinels=("user/keep.txt",), check=check_link_kept("out", "user"),
      why="out links to the user's folder: replacing out would replace the link or empty the folder")
    a("link-to-user-folder-fp8-overwrite", "export fp8", FP8 + ["--overwrite"], setup=to_user,
      sentinels=("user/keep.txt",), check=check_link_kept("out", "user"),
      why="out links to the user's folder: replacing out would replace the link or empty the folder")
    a("link-to-user-folder-distill-overwrite", "distill", DISTILL + ["--overwrite"], expect="either",
      setup=to_user, sentinels=("user/keep.txt",), check=check_link_kept("out", "user"),
      why="a trainer adds to output_dir: following the link is fine; replacing the link or the user's files, or "
          "leaving .old-*/.tmp-* folders, is not")
    too_long = check_names(("bytes", "long"))
    a("name-250-chars-prune", "prune", opt(PRUNE, "--output", "o" * 250), check=too_long,
      why="255 bytes are allowed, and the command writes longer-named temporary siblings")
    a("name-250-chars-data-prepare", "data prepare", prepare_argv("{SMALL}", "o" * 250), check=too_long,
      why="255 bytes are allowed, and the command writes longer-named temporary siblings")
    a("name-newline-prune", "prune", opt(PRUNE, "--output", "out\nx"), expect="either",
      why="a legal name with a newline: refuse cleanly, or write exactly that folder")
    a("name-under-file-prune", "prune", opt(PRUNE, "--output", "notes.txt/out"), sentinels=("notes.txt",),
      check=check_names("notes.txt"), why="a path component is a file")
    a("name-under-file-distill", "distill", opt(DISTILL, "--output-dir", "notes.txt/out"), sentinels=("notes.txt",),
      check=check_names("notes.txt"), why="a path component is a file")

    # ---------------- MINITRON_CACHE and the embedded alias
    a = case("caches")
    imp_local = IMPORTANCE + ["--data", "small.jsonl"]
    small = copy_file("SMALL", "small.jsonl")
    cache_file = chain(small, files(cachefile="not a folder\n"))
    names_var = check_names("MINITRON_CACHE")
    on_the_fly = "the local data is prepared on the fly into $MINITRON_CACHE/data"
    a("cache-is-file-importance", "importance", imp_local, setup=cache_file, sentinels=("cachefile",),
      env={"MINITRON_CACHE": "{D}/cachefile"}, check=names_var, why=on_the_fly + "; it is a file")
    a("cache-under-file-importance", "importance", imp_local, setup=cache_file, sentinels=("cachefile",),
      env={"MINITRON_CACHE": "{D}/cachefile/sub"}, check=names_var, why=on_the_fly + "; it lies under a file")
    a("cache-empty-importance", "importance", imp_local, setup=small, env={"MINITRON_CACHE": ""}, check=names_var,
      why=on_the_fly + "; the empty string used to write ./data into the current folder")
    a("cache-readonly-importance", "importance", imp_local, setup=small,
      env={"MINITRON_CACHE": "/proc/minitron-cache"}, check=names_var,
      why=on_the_fly + "; /proc is read-only (we run as root: chmod would not stop a write)")
    a("cache-is-file-prune-alias", "prune", opt(PRUNE, "--model", "smollm2-135m"), setup=files(cachefile="x\n"),
      sentinels=("cachefile",), env={"MINITRON_CACHE": "{D}/cachefile"}, check=names_var,
      why="the embedded model is converted into $MINITRON_CACHE; it is a file")
    a("cache-empty-prune-alias", "prune", opt(PRUNE, "--model", "smollm2-135m"), env={"MINITRON_CACHE": ""},
      check=names_var, why="the embedded model is converted into $MINITRON_CACHE; it is empty")
    a("cache-readonly-data-prepare-alias-tokenizer", "data prepare",
      ["data", "prepare", "--data", "small.jsonl", "--output", "out"], setup=small,
      env={"MINITRON_CACHE": "/proc/minitron-cache"}, check=names_var,
      why="the default tokenizer is the embedded model's, converted into the (read-only) cache")
    a("cache-alias-local-folder-prune", "prune", opt(PRUNE, "--model", "smollm2-135m"), expect="succeed",
      setup=model("smollm2-135m"), check=check_pruned_from_local(),
      why="./smollm2-135m is a copy of the tiny model: the local folder must win over the embedded alias")

    # ---------------- data preparations that fail, then a rerun on the fixed input; damaged prepared folders
    a = case("failed preparations")
    good = {"docs": docs_jsonl(8, "good")}
    g = "data prepare"

    def failing(name, rel, content, fixed, why, data=None, done="out/manifest.json"):
        argv = prepare_argv(data or rel)
        a(name, g, argv, setup=files(**{rel: content}) if rel else None,
          check=_checks(check_names(Path(rel).name) if rel else None, check_rerun(argv, fixed, done)), why=why)

    a("prep-ok", g, prepare_argv("{SMALL}"), expect="succeed", check=check_documents(60), why="control")
    failing("prep-bad-json-line", "bad.jsonl", docs_jsonl(3, "a") + "{oops\n" + docs_jsonl(3, "b"),
            files(**{"bad.jsonl": good["docs"]}), "line 4 is not JSON")
    failing("prep-number-in-text-field", "num.jsonl", docs_jsonl(3, "a") + '{"text": 5}\n',
            files(**{"num.jsonl": good["docs"]}), "a number in the text field")
    failing("prep-empty-file", "empty.jsonl", "", files(**{"empty.jsonl": good["docs"]}), "an empty file")
    failing("prep-parquet-not-parquet", "docs.parquet", b"PAR1 this is not parquet\n" * 40,
            write_parquet("docs.parquet"), "a .parquet file that is not parquet")
    a("prep-blend-missing-second-source", g, prepare_argv(_blend("a.jsonl", "b.jsonl")),
      setup=files(**{"a.jsonl": docs_jsonl(8, "a")}),
      check=_checks(check_names("b.jsonl"), check_rerun(prepare_argv(_blend("a.jsonl", "b.jsonl")),
                                                        files(**{"b.jsonl": docs_jsonl(8, "b")}), "out/blend.yaml")),
      why="the second source of a blend does not exist (the first is fine)")
    a("prep-json-with-bom", g, prepare_argv("docs.json"), expect="succeed",
      setup=files(**{"docs.json": "\ufeff" + json.dumps([{"text": _doc_text("bom", i)} for i in range(8)])}),
      check=check_documents(8), why="a .json file that starts with a UTF-8 BOM (Windows editors write one)")
    a("prep-dir-upper-case-extensions", g, prepare_argv("docs"), expect="succeed",
      setup=files(**{"docs/a.jsonl": docs_jsonl(5, "a"), "docs/D.JSONL": docs_jsonl(5, "D"),
                     "docs/E.Jsonl": docs_jsonl(5, "E")}),
      check=check_documents(15), why="a folder of a.jsonl, D.JSONL, E.Jsonl: all 15 documents must be read")
    a("prep-dir-symlinked-subfolder", g, prepare_argv("docs"), expect="succeed",
      setup=chain(files(**{"docs/a.jsonl": docs_jsonl(5, "a"), "elsewhere/c.jsonl": docs_jsonl(5, "c")}),
                  link("docs/more", "../elsewhere")),
      check=check_documents(10, or_named="more"), why="docs/more links to another folder: read it, or say so")
    imp_p = IMPORTANCE + ["--data", "p"]
    a("prepared-ok-importance", "importance", IMPORTANCE + ["--data", "{PREP}"], expect="succeed",
      why="control: the undamaged prepared folder")
    a("prepared-manifest-list", "importance", imp_p, setup=chain(copy_fixture("PREP", "p"),
                                                                 damage_prepared("p", "manifest-list")),
      sentinels=("p",), check=check_names("manifest"), why="manifest.json holds a list")
    a("prepared-split-number", "importance", imp_p, setup=chain(copy_fixture("PREP", "p"),
                                                                damage_prepared("p", "split-number")),
      sentinels=("p",), check=check_names("manifest"), why="manifest.json's calibration and validation entries are "
                                                            "numbers")
    a("prepared-bin-other-bytes", "importance", imp_p, setup=chain(copy_fixture("PREP", "p"),
                                                                   damage_prepared("p", "bin-other-bytes")),
      sentinels=("p",), check=check_names("65535"), why="every .bin shard overwritten with as many 0xFF bytes: "
                                                        "token ids 65535, beyond the vocabulary (49152)")
    a("prepared-bin-other-bytes-evaluate", "evaluate", ["evaluate", "{T}", "--samples", "2", "--seq-len", "32",
                                                        "--data", "p"],
      setup=chain(copy_fixture("PREP", "p"), damage_prepared("p", "bin-other-bytes")), sentinels=("p",),
      check=check_names("65535"), why="the same, read by evaluate (validation split)")

    # ---------------- full disk: the output on a 64 KiB tmpfs
    a = case("full disk")
    space = check_names(("space", "free"))
    a("disk-full-data-prepare", "data prepare", prepare_argv("{DATA}", "small/out"), setup=tmpfs(), check=space,
      why="400 documents of tokens do not fit in 64 KiB")
    a("disk-full-prune", "prune", opt(PRUNE, "--output", "small/out"), setup=tmpfs(), check=space,
      why="the pruned model (MBs) does not fit in 64 KiB")
    a("disk-full-distill", "distill", opt(DISTILL, "--output-dir", "small/out"), setup=tmpfs(), check=space,
      why="the first checkpoint does not fit in 64 KiB")
    a("disk-full-fp8", "export fp8", opt(FP8, "--output", "small/out"), setup=tmpfs(), check=space,
      why="the FP8 checkpoint does not fit in 64 KiB")

    # ---------------- integers of the wrong type in YAML
    a = case("targets of the wrong type")
    pcfg = ["prune", "--config", "p.yaml"]
    wrong_type = ("integer", "bool", "whole number")
    a("type-target-float", "prune", pcfg, setup=files(**{"p.yaml": PRUNE_YAML + "target: {intermediate_size: 64.7}\n"}),
      check=check_names("intermediate_size", wrong_type), why="used to prune to 64, exit 0")
    a("type-target-bool", "prune", pcfg, setup=files(**{"p.yaml": PRUNE_YAML + "target: {intermediate_size: true}\n"}),
      check=check_names("intermediate_size", wrong_type), why="used to prune to 1, exit 0")
    a("type-target-string-number", "prune", pcfg, expect="either",
      setup=files(**{"p.yaml": PRUNE_YAML + 'target: {hidden_size: "36"}\n'}),
      why="a quoted number: refuse, or read it as 36 (a decision of its own)")
    a("type-target-layers-whole-float", "prune", pcfg, expect="either",
      setup=files(**{"p.yaml": PRUNE_YAML + "target: {num_hidden_layers: 1.0}\n"}),
      why="a whole float: refuse, or read it as 1")
    a("type-calib-samples-bool", "prune", pcfg,
      setup=files(**{"p.yaml": PRUNE_YAML.replace("calib_samples: 4", "calib_samples: true")
                     + "target: {hidden_size: 32}\n"}), check=check_names("calib_samples", wrong_type),
      why="a bool where an integer is expected")
    a("type-run-target-float", "run", ["run", "run.yaml"],
      setup=run_yaml(set_("prune.target", {"hidden_size": 32, "intermediate_size": 64.7})),
      check=check_names("intermediate_size", wrong_type), why="the same in a run config")
    a("type-run-target-bool", "run", ["run", "run.yaml"],
      setup=run_yaml(set_("prune.target", {"hidden_size": 32, "intermediate_size": True})),
      check=check_names("intermediate_size", wrong_type), why="the same in a run config")
    a("type-run-set-bool", "run", ["run", "run.yaml", "--set", "prune.calib_samples=true"], setup=run_yaml(),
      check=check_names("calib_samples", wrong_type), why="--set reads YAML scalars: true is a bool, not an integer")

    # ---------------- models that do not match their tokenizer, or the checkpoint to resume
    a = case("models that do not match")
    sizes = check_names("1024", "49152")
    vwhy = "<other-vocab> has vocab_size 1024 and the real 49152-token tokenizer"
    a("mismatch-vocab-prune", "prune", opt(PRUNE, "--model", "{V}"), check=sizes, why=vwhy)
    a("mismatch-vocab-importance", "importance", opt(IMPORTANCE, "--model", "{V}"), check=sizes, why=vwhy)
    a("mismatch-vocab-distill", "distill", opt(opt(DISTILL, "--student", "{V}"), "--teacher", "{V}"), check=sizes,
      why=vwhy + " (student and teacher)")
    a("mismatch-vocab-correct", "correct-teacher", opt(CORRECT, "--model", "{V}"), check=sizes, why=vwhy)
    a("mismatch-vocab-fp8", "export fp8", ["{V}" if x == "{T}" else x for x in FP8], check=sizes, why=vwhy)
    a("mismatch-vocab-evaluate", "evaluate", ["evaluate", "{V}", "--samples", "2", "--seq-len", "32"], check=sizes,
      why=vwhy)
    shapes = check_names("32", "64")
    a("mismatch-resume-other-shape-distill", "distill", DISTILL + ["--resume-from-checkpoint", "ck"],
      setup=_copy_other_shape_checkpoint(), sentinels=("ck",), check=shapes,
      why="ck is a checkpoint of a pruned student (hidden 32, intermediate 64); this student has hidden 64")
    a("mismatch-resume-other-shape-correct", "correct-teacher", CORRECT + ["--resume-from-checkpoint", "ck"],
      setup=_copy_other_shape_checkpoint(), sentinels=("ck",), check=shapes,
      why="ck is a checkpoint of a pruned model (hidden 32); the model has hidden 64")

    # ---------------- hostile YAML: an alias bomb, a huge file
    a = case("hostile YAML")
    bomb_why = ("9 levels of 9 aliases: 387 million leaves from a few hundred bytes (memory capped at +3 GiB); the "
                "refusal must be about the expansion, not the option's type")
    bomb = check_names(("alias", "expand"))
    a("yaml-alias-bomb-prune", "prune", ["prune", "--config", "bomb.yaml"], timeout=60, mem_mb=3072, check=bomb,
      setup=files(**{"bomb.yaml": yaml_bomb("calib_samples", head="model: {T}\noutput: out\n")}), why=bomb_why)
    a("yaml-alias-bomb-run", "run", ["run", "bomb.yaml"], timeout=60, mem_mb=3072, check=bomb,
      setup=files(**{"bomb.yaml": yaml_bomb("seq_len", head="output_dir: {D}/out\nteacher: {T}\nprune:\n  target: "
                                                        "{hidden_size: 32}\n")}),
      why=bomb_why)
    a("yaml-alias-bomb-data-prepare", "data prepare", ["data", "prepare", "--config", "bomb.yaml"], timeout=60,
      mem_mb=3072, check=bomb, setup=files(**{"bomb.yaml": yaml_bomb("max_documents", head="output: out\n")}),
      why=bomb_why)
    a("yaml-20mb-prune", "prune", pcfg, timeout=90, mem_mb=3072,
      setup=padded("p.yaml", PRUNE_YAML + "target: {hidden_size: 32}\n"),
      why="a valid config padded with 20 MB of comments: only its size is wrong")
    a("yaml-20mb-data-prepare", "data prepare", ["data", "prepare", "--config", "p.yaml"], timeout=90, mem_mb=3072,
      setup=padded("p.yaml", "data: {SMALL}\noutput: out\ntokenizer: {T}\n"),
      why="a valid config padded with 20 MB of comments: only its size is wrong")

    # ---------------- signals: a scheduler's SIGTERM, a user's Ctrl-C
    a = case("signals")
    jit = opt(opt(DISTILL, "--max-steps", "1000"), "--save-strategy", "no")
    a("signal-sigterm-distill-jit-checkpoint", "distill", opt(jit, "--save-steps", drop=True)
      + ["--enable-jit-checkpoint", "true"], signal=(r"\{'loss'", signal.SIGTERM, 0, False),
      allow_new=("out", "out/*"), stop_line=r"^minitron distill: .*checkpoint-\d+", check=check_preempted(),
      timeout=180, why="SIGTERM after the first logged step: exit != 0 (a preempted run is not a finished one), "
                       "and stderr names the checkpoint to resume from")
    a("signal-sigterm-correct-jit-checkpoint", "correct-teacher",
      opt(CORRECT, "--max-steps", "1000") + ["--save-strategy", "no", "--logging-steps", "1",
                                             "--enable-jit-checkpoint", "true"],
      signal=(r"\{'loss'", signal.SIGTERM, 0, False), allow_new=("out", "out/*"),
      stop_line=r"^minitron correct-teacher: .*checkpoint-\d+", check=check_preempted(), timeout=180,
      why="the same for teacher correction")
    a("signal-sigint-data-prepare-workers", "data prepare", prepare_argv("big.jsonl") + ["--num-proc", "2",
                                                                                      "--shard-mb", "1"],
      setup=lambda d, fx: (d / "big.jsonl").write_text(docs_jsonl(30000, "big")),
      signal=(r"prepare:", signal.SIGINT, 1.5, True),
      allow_new=("out", "out/*"), stop_line=r"^minitron data( prepare)?: interrupted", check=check_exit(130),
      timeout=120, why="Ctrl-C: SIGINT to the process group, tokenizing workers included, 1.5 s into 21 MB: one "
                       "line and exit 130, no worker's traceback")


def _copy_run(d: Path, fx):
    """A private copy of the finished fixture run, its config pointing at the copy."""
    src = Path(fx["RUN"])
    shutil.copytree(src, d / "run", symlinks=True)
    y = (d / "run" / "run.yaml").read_text().replace(str(src), str(d / "run"))
    (d / "run" / "run.yaml").write_text(y)
    # report.md / run_config.yaml mention the old path; done.json configs hold output paths too
    for p in (d / "run" / "out").rglob("*.json"):
        try:
            t = p.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if str(src) in t:
            p.write_text(t.replace(str(src), str(d / "run")))


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def build_models(fx_dir: Path) -> None:
    """(in a child process) tiny random Llamas with the default model's tokenizer."""
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    from minitron_hf.loading import resolve_model

    src = resolve_model("smollm2-135m")
    ref = AutoConfig.from_pretrained(src)
    for name, seed, vocab in (("tiny", 0, 49152), ("student", 1, 49152), ("othervocab", 2, 1024)):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                          tie_word_embeddings=True, bos_token_id=ref.bos_token_id, eos_token_id=ref.eos_token_id,
                          pad_token_id=getattr(ref, "pad_token_id", None))
        m = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():  # random init has tiny norms; spread them so channel importance differs
            for n, p in m.named_parameters():
                if "norm" in n:
                    p.copy_(torch.rand_like(p) * 2)
        m.config.architectures = ["LlamaForCausalLM"]
        d = fx_dir / name
        m.save_pretrained(d)
        for f in TOKENIZER_FILES:
            if (src / f).exists() and not (f == "generation_config.json" and (d / f).exists()):
                shutil.copy2(src / f, d / f)
    # a small local data file (text field), for cases that need --data with a valid file
    from minitron_hf.data import python_docs_documents

    docs = python_docs_documents()[:400]
    with open(fx_dir / "data.jsonl", "w") as f:
        for _, text in docs:
            f.write(json.dumps({"text": text}) + "\n")


def cli_cmd(project: Path) -> list:
    """The real CLI of ``project`` (on PYTHONPATH in the children's environment)."""
    return [sys.executable, "-m", "minitron_hf.cli"]


def build_fixtures(work: Path, env: dict, project: Path, log) -> dict:
    fx_dir = work / "fixtures"
    fx_dir.mkdir(parents=True, exist_ok=True)
    fx = {"T": fx_dir / "tiny", "S": fx_dir / "student", "V": fx_dir / "othervocab", "DIST": fx_dir / "distilled",
          "RUN": fx_dir / "run", "DATA": fx_dir / "data.jsonl", "SMALL": fx_dir / "small.jsonl",
          "PREP": fx_dir / "prepared"}
    notes = []
    t0 = time.time()
    if not (fx["T"] / "model.safetensors").exists():
        r = subprocess.run([sys.executable, __file__, "--_build-models", str(fx_dir)], env=env, cwd=fx_dir,
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"building the tiny models failed:\n{r.stderr[-3000:]}")
    log(f"tiny models in {time.time() - t0:.0f} s")
    if not fx["SMALL"].exists():
        with open(fx["DATA"]) as f:
            fx["SMALL"].write_text("".join(f.readlines()[:60]))
    # a finished distill output and a finished run, with the real CLI (in parallel: independent)
    import yaml

    jobs = []
    if not (fx["DIST"] / "final").exists():
        argv = [a.replace("{S}", str(fx["S"])).replace("{T}", str(fx["T"])) for a in DISTILL]
        argv[argv.index("out")] = str(fx["DIST"])
        jobs.append(("distill", argv))
    if not (fx["RUN"] / "out" / "report.md").exists():
        fx["RUN"].mkdir(exist_ok=True)
        (fx["RUN"] / "run.yaml").write_text(yaml.safe_dump(base_run_config(fx, fx["RUN"] / "out"), sort_keys=False))
        jobs.append(("run", ["run", str(fx["RUN"] / "run.yaml")]))
    if not (fx["PREP"] / "manifest.json").exists():
        jobs.append(("data prepare", ["data", "prepare", "--data", str(fx["SMALL"]), "--output", str(fx["PREP"]),
                                      "--tokenizer", str(fx["T"]), "--overwrite"]))
    procs = [(name, subprocess.Popen(cli_cmd(project) + argv, env=env, cwd=fx_dir, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)) for name, argv in jobs]
    for name, p in procs:
        out, _ = p.communicate()
        if p.returncode:
            notes.append(f"fixture `{name}` failed (exit {p.returncode}): {last_line(out)}")
            log(f"fixture {name} FAILED: {out[-2000:]}")
    log(f"fixtures ready in {time.time() - t0:.0f} s")
    return {k: Path(v) for k, v in fx.items()}, notes


# --------------------------------------------------------------------------------------------------
# Running and classifying
# --------------------------------------------------------------------------------------------------

def last_line(text: str) -> str:
    lines = [seg for ln in text.rstrip().splitlines() for seg in ln.split("\r") if seg.strip()]
    return lines[-1].strip() if lines else ""


def error_line(text: str) -> str:
    """The last `minitron <cmd>: error: ...` segment of an output (a progress bar may be redrawn after it)."""
    hits = [m.group(0).strip() for m in re.finditer(r"minitron[\w -]*: (?:internal )?error[^\r\n]*", text)]
    return hits[-1] if hits else last_line(text)


def digest(p: Path) -> dict:
    """{relative path: sha256 or 'dir'} of a file or a folder tree (symlinks by target)."""
    if not p.exists() and not p.is_symlink():
        return {}
    if p.is_file():
        return {".": hashlib.sha256(p.read_bytes()).hexdigest()}
    out = {".": "dir"}
    for q in sorted(p.rglob("*")):
        rel = str(q.relative_to(p))
        if q.is_symlink():
            out[rel] = "link:" + os.readlink(q)
        elif q.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(q.read_bytes()).hexdigest()
    return out


def tree(p: Path) -> set:
    if not p.exists():
        return set()
    return {str(q.relative_to(p)) for q in p.rglob("*")}


def top_new(before: set, after: set) -> list:
    """New paths, reduced to their top-most new ancestors."""
    new = sorted(after - before)
    tops = []
    for n in new:
        if not any(n.startswith(t + "/") for t in tops):
            tops.append(n)
    return tops


class Job:
    """A running case: a forked child of this process (``fork``) or ``python -m minitron_hf.cli``."""

    def __init__(self, case, argv, d, tmp, env, mode, project, threads, case_env=None):
        self.case, self.d, self.tmp = case, d, tmp
        self.out_path, self.err_path = d.parent / f"{d.name}.stdout", d.parent / f"{d.name}.stderr"
        self.t0 = time.time()
        self.rc = None
        self.timed_out = False
        self.signalled = None  # seconds after the start at which case.signal was sent
        self._seen = None
        self._read = 0.0
        if mode == "subprocess":
            e = dict(env, TMPDIR=str(tmp), **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
            for k, v in (case_env or {}).items():
                if v is None:
                    e.pop(k, None)
                else:
                    e[k] = v
            with open(self.out_path, "wb") as o, open(self.err_path, "wb") as er:
                self.proc = subprocess.Popen(cli_cmd(project) + argv, cwd=d, env=e, stdout=o, stderr=er,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             preexec_fn=_mem_cap(case.mem_mb, fresh=True) if case.mem_mb else None)
            self.pid = self.proc.pid
        else:
            self.proc = None
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: behave like `python -m minitron_hf.cli ARGV` started in d
                _child(argv, d, tmp, self.out_path, self.err_path, threads, case_env, case.mem_mb)
            self.pid = pid

    def _maybe_signal(self):
        """case.signal = (regex, signal, delay, group): once the command's output matches, wait delay s, send it."""
        pattern, signum, delay, group = self.case.signal
        now = time.time()
        if self._seen is None:
            if now - self._read < 0.1:
                return
            self._read = now
            text = "".join(p.read_text(errors="replace") if p.exists() else "" for p in (self.out_path, self.err_path))
            if not re.search(pattern, text):
                return
            self._seen = now
        if now - self._seen >= delay:
            try:
                (os.killpg if group else os.kill)(self.pid, signum)
            except ProcessLookupError:
                pass
            self.signalled = round(now - self.t0, 1)

    def poll(self):
        if self.rc is not None:
            return self.rc
        if self.case.signal and self.signalled is None:
            self._maybe_signal()
        if self.proc is not None:
            self.rc = self.proc.poll()
        else:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
        if self.rc is None and time.time() - self.t0 > self.case.timeout:
            self.timed_out = True
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.rc = self.proc.wait() if self.proc else os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        if self.rc is not None:
            self.seconds = time.time() - self.t0
            try:  # whatever the command started in its own process group (sandboxes, workers)
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return self.rc


def _mem_cap(mem_mb, fresh=False):
    """A preexec/child hook: cap the address space at what the process has now (a fresh interpreter: 4 GiB, about
    what importing the CLI takes) plus ``mem_mb``: a command that tries to expand a YAML bomb gets a MemoryError
    instead of the machine's memory."""
    def f():
        import resource

        base = 4 << 30
        if not fresh:
            with open("/proc/self/status") as st:
                base = next(int(ln.split()[1]) * 1024 for ln in st if ln.startswith("VmSize:"))
        cap = base + (mem_mb << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return f


def _child(argv, d, tmp, out_path, err_path, threads, env=None, mem_mb=0):
    rc = 1
    try:
        os.setpgid(0, 0)
        os.chdir(d)
        os.environ["TMPDIR"] = str(tmp)
        for k, v in (env or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if mem_mb:
            _mem_cap(mem_mb)()
        tempfile.tempdir = None
        fo = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        fe = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fo, 1)
        os.dup2(fe, 2)
        nul = os.open(os.devnull, os.O_RDONLY)
        os.dup2(nul, 0)
        sys.argv = [str(Path(sys.executable).parent / "minitron"), *argv]
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            from minitron_hf.cli import main

            rc = main(argv)
        except SystemExit as e:
            if e.code is None:
                rc = 0
            elif isinstance(e.code, int):
                rc = e.code
            else:
                print(e.code, file=sys.stderr)
                rc = 1
        except BaseException:
            traceback.print_exc()
            rc = 1
        else:
            if rc is None:
                rc = 0
            elif not isinstance(rc, int):
                print(rc, file=sys.stderr)
                rc = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(rc & 0xFF if isinstance(rc, int) else 1)


SEVERITY = ("data lost", "timeout", "traceback", "silent success", "left behind", "bug (exit 3)", "check failed",
            "refused", "unclear", "setup failed")


def finish(job: Job, prep: dict) -> dict:
    case, d = job.case, job.d
    stdout = job.out_path.read_text(errors="replace") if job.out_path.exists() else ""
    stderr = job.err_path.read_text(errors="replace") if job.err_path.exists() else ""
    rc = job.rc
    flags, details = [], {}
    lost = []
    for rel, dig in prep["sentinels"].items():
        now = digest(d / rel)
        if now != dig:
            gone = [k for k in dig if k not in now]
            changed = [k for k in dig if k in now and now[k] != dig[k]]
            lost.append(f"{rel}: " + ("gone" if not now else
                                       ", ".join(filter(None, [f"{len(gone)} lost" if gone else "",
                                                               f"{len(changed)} changed" if changed else "",
                                                               "" if gone or changed else "new files inside"]))))
    # a sentinel that only gained files is not data lost; it is a write into something that was there
    really_lost = [x for x in lost if not x.endswith("new files inside")]
    if really_lost:
        flags.append("data lost")
        details["lost"] = really_lost
    if job.timed_out:
        flags.append("timeout")
    if "Traceback (most recent call last)" in stderr or "Traceback (most recent call last)" in stdout:
        flags.append("traceback")
    if case.expect == "fail" and rc == 0:
        flags.append("silent success")
        wrote = top_new(prep["tree"], tree(d))
        if wrote:
            details["wrote"] = [_describe(d / n, n) for n in wrote]
    grew = [x for x in lost if x.endswith("new files inside")]
    if grew and rc == 0:
        details["wrote inside"] = grew
    if rc != 0:
        new = [n for n in top_new(prep["tree"], tree(d))
               if not any(fnmatch.fnmatch(n, g) for g in case.allow_new)]
        # torch makes an (empty) inductor cache folder in $TMPDIR on import: the library's, not the command's
        stray = sorted(x for x in os.listdir(job.tmp) if not x.startswith("torchinductor_")) if job.tmp.exists() \
            else []
        if new or stray or grew:
            flags.append("left behind")
            details["left"] = [_describe(d / n, n) for n in new] + [f"$TMPDIR/{s}" for s in stray] + grew
    last = last_line(stderr)
    # `minitron <cmd>: error: ...`; a bare `minitron: error:` only where no command was given (group cli)
    clean_line = (last.startswith("minitron ") or (case.group == "cli" and last.startswith("minitron:"))) \
        and "error:" in last or bool(case.stop_line and re.search(case.stop_line, last))
    if rc == 3 and "traceback" not in flags:
        flags.append("bug (exit 3)")
    if case.signal:
        details["signal"] = [f"{signal.Signals(case.signal[1]).name} sent {job.signalled} s after the start"
                             if job.signalled is not None else f"{signal.Signals(case.signal[1]).name} never sent: "
                             f"{case.signal[0]!r} never appeared in the output"]
    problems = details["signal"] if case.signal and job.signalled is None else []
    if case.check:
        try:
            problems = case.check(d, rc, stdout, stderr) + problems
        except Exception as e:  # noqa: BLE001
            problems = [f"check crashed: {e!r}"] + problems
    if problems:
        flags.append("check failed")
        details["check"] = problems
    if case.expect == "succeed" and rc != 0 and clean_line:
        flags.append("refused")
    if rc != 0 and not clean_line and not {"traceback", "timeout", "bug (exit 3)"} & set(flags):
        flags.append("unclear")
        m = None
        for m in re.finditer(r"minitron[\w -]*: error:", stderr):
            pass
        if m is not None:
            after = [x for ln in stderr[m.end():].splitlines()[1:] for x in ln.split("\r") if x.strip()]
            bar = any(re.search(r"\d+%\|", x) for x in after)
            if after:
                details["message"] = [f"the error line is followed by {len(after)} more line(s)"
                                      + (" (a progress bar redrawn after it)" if bar else " (a multi-line message)")]
            elif m.group(0).startswith("minitron:"):
                details["message"] = ["`minitron: error:` names no command"]
    if flags:
        outcome = min(flags, key=SEVERITY.index)
    else:
        outcome = "ok" if rc == 0 else "clean"
    return {"name": case.name, "group": case.group, "cls": case.cls, "expect": case.expect, "argv": case.argv,
            "rc": rc, "outcome": outcome, "flags": flags, "seconds": round(job.seconds, 1), "last_stderr": last[:400],
            "error_line": error_line(stderr)[:400] if error_line(stderr) != last else "",
            "last_stdout": last_line(stdout)[:300], "details": details, "why": case.why,
            **({"env": case.env} if case.env else {})}


def _describe(p: Path, rel: str) -> str:
    if p.is_dir():
        n = sum(1 for _ in p.rglob("*"))
        return f"{rel}/ (empty folder)" if n == 0 else f"{rel}/ ({n} entries)"
    if p.is_file():
        return f"{rel} ({p.stat().st_size} bytes)"
    return rel


def prepare(case: Case, work: Path, fx: dict):
    d = work / "cases" / case.name
    tmp = work / "tmp" / case.name
    for p in (d, tmp):
        if p.exists():
            for q in p.iterdir():  # a tmpfs an interrupted earlier run left mounted
                if q.is_dir() and os.path.ismount(q):
                    _unmount(q)
            shutil.rmtree(p)
        p.mkdir(parents=True)
    paths = fx_paths(fx, d)
    cleanup = case.setup(d, fx) if case.setup else None
    try:
        for rel in case.sentinels:
            p = d / rel
            if not p.exists() and not p.is_symlink():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(f"sentinel {case.name} {rel} {os.urandom(8).hex()}\n")
        prep = {"sentinels": {rel: digest(d / rel) for rel in case.sentinels}, "tree": tree(d),
                "cleanup": cleanup if callable(cleanup) else None,
                "env": {k: None if v is None else sub(v, paths) for k, v in case.env.items()}}
    except BaseException:
        if callable(cleanup):
            cleanup()
        raise
    return d, tmp, [sub(a, paths) for a in case.argv], prep


def run_cases(selected, work, fx, env, mode, project, workers, log):
    RUNTIME.update(env=env, mode=mode, project=project, fx=fx, work=work)
    results = []
    pending = list(selected)
    running = []
    threads = 1 if workers > 1 else 0

    def not_run(case, outcome, e):
        results.append({"name": case.name, "group": case.group, "cls": case.cls, "expect": case.expect,
                        "argv": case.argv, "rc": None, "outcome": outcome, "flags": [outcome], "seconds": 0,
                        "last_stderr": (str(e) if outcome == "skipped" else repr(e))[:400], "last_stdout": "",
                        "details": {}, "why": case.why})
        log(f"  {case.name:<45} {outcome}: {e}")

    try:
        while pending or running:
            while pending and len(running) < workers:
                case = pending.pop(0)
                try:
                    d, tmp, argv, prep = prepare(case, work, fx)
                except SkipCase as e:
                    not_run(case, "skipped", e)
                    continue
                except Exception as e:  # noqa: BLE001
                    not_run(case, "setup failed", e)
                    continue
                try:
                    job = Job(case, argv, d, tmp, env, mode, project, threads, prep["env"])
                except BaseException:
                    if prep["cleanup"]:
                        prep["cleanup"]()
                    raise
                running.append((job, prep))
            time.sleep(0.05)
            for item in list(running):
                job, prep = item
                if job.poll() is not None:
                    running.remove(item)
                    try:
                        r = finish(job, prep)
                    finally:
                        if prep["cleanup"]:
                            _run_cleanups([prep["cleanup"]])
                    results.append(r)
                    log(f"  {r['name']:<45} {r['outcome']:<15} rc={r['rc']} {r['seconds']:>6.1f}s  "
                        f"{r['last_stderr'][:90]}")
    finally:  # an interrupted probe: no lock holder left sleeping, no tmpfs left mounted, no command running
        for job, prep in running:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if prep["cleanup"]:
                _run_cleanups([prep["cleanup"]])
    order = {c.name: i for i, c in enumerate(selected)}
    return sorted(results, key=lambda r: order[r["name"]])


# --------------------------------------------------------------------------------------------------
# Kill and resume
# --------------------------------------------------------------------------------------------------

KILL_DISTILL = ["distill", "--student", "{S}", "--teacher", "{T}", "--output-dir", "out", "--max-steps", "6",
                "--per-device-train-batch-size", "4", "--seq-len", "64", "--eval-samples", "4", "--logging-steps",
                "1", "--report-to", "none", "--save-strategy", "steps", "--save-steps", "1", "--log-level", "info",
                "--learning-rate", "1e-3"]


def _ckpts(out: Path) -> dict:
    res = {}
    for p in sorted(out.glob("*checkpoint-*")) if out.exists() else []:
        res[p.name] = "complete" if (p / "trainer_state.json").exists() else f"partial ({len(list(p.iterdir()))} files)"
    return res


def kill_and_resume(work, fx, env, project, log) -> list:
    rows = []
    scenarios = [
        ("mid-step", [], "checkpoint-2 complete (trainer_state.json written): step 3 is running"),
        ("mid-save", [], "the save of checkpoint-3 has begun (tmp-checkpoint-3 or checkpoint-3 appears)"),
        ("during evaluation", ["--eval-strategy", "steps", "--eval-steps", "2", "--eval-samples", "16",
                               "--per-device-eval-batch-size", "1"],
         "0.5 s after step 2's loss is logged: its evaluation is running (before checkpoint-2 is saved)"),
        ("NaN (lr 1e30), then resume as advised", ["--learning-rate", "1e30"],
         "not killed: the run must stop itself; then rerun with --learning-rate 1e-3 and --resume-from-checkpoint "
         "set to the checkpoint its message names"),
    ]
    for name, extra, moment in scenarios:
        d = work / "kill" / name.replace(" ", "-")
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        paths = fx_paths(fx, d)
        base = [sub(a, paths) for a in KILL_DISTILL]
        argv = base + extra
        nan = name.startswith("NaN")
        log_path = d / "first.log"
        row = {"scenario": name, "kill when": moment}
        t0 = time.time()
        with open(log_path, "wb") as lf:
            p = subprocess.Popen(cli_cmd(project) + argv, cwd=d, env=env, stdout=lf, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        out = d / "out"
        killed_at = None
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not nan:
            if name == "mid-step":
                if (out / "checkpoint-2" / "trainer_state.json").exists():
                    time.sleep(0.02)
                    killed_at = "checkpoint-2 complete"
            elif name == "mid-save":
                if out.exists() and (any(out.glob("*checkpoint-3")) or any(out.glob("tmp-checkpoint-3*"))):
                    killed_at = "save of checkpoint-3 begun"
            else:
                text = log_path.read_text(errors="replace")
                # training logs {'loss': ...} each step (logging_steps 1); step 2's evaluation follows its log line
                if len(re.findall(r"\{'loss'", text)) >= 2:
                    time.sleep(0.5)
                    killed_at = "step 2 logged + 0.5 s"
            if killed_at:
                os.killpg(p.pid, signal.SIGKILL)
                break
            time.sleep(0.005 if name == "mid-save" else 0.05)
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        row["first run s"] = round(time.time() - t0, 1)
        resume_arg = "true"
        if nan:
            text = log_path.read_text(errors="replace")
            err = error_line(text)
            good = re.search(r"last good checkpoint [^;]*? is ([\w./-]*checkpoint-\d+)", err)
            start_again = "no good checkpoint" in err and "start again" in err
            named = [good.group(1)] if good else ([None] if start_again else [])
            killed_at = f"no kill: exit {p.returncode}"
            row["first run"] = err[:600]
            row["error is last line"] = err == last_line(text)
            if p.returncode == 0 or not named:
                row.update({"killed": killed_at + ("" if named else ", no checkpoint named"), "resumed": "-",
                            "from step": "-", "finished": "-", "final finite": "-",
                            "checkpoints at kill": ", ".join(f"{k} {v}" for k, v in _ckpts(out).items()) or "none"})
                st = out / "final" / "model.safetensors"
                if st.exists():
                    row["final finite"] = "no" if _nonfinite(st) else "yes"
                rows.append(row)
                continue
            resume_arg = named[-1]  # None: the message says there is no good checkpoint, start again
            ck = next((c for c in (Path(resume_arg), d / resume_arg) if (c / "model.safetensors").exists()),
                      None) if resume_arg else None
            if ck is not None:
                row["named checkpoint max |w|"] = _max_abs(ck / "model.safetensors")
            argv = base  # the advised rerun: a sane learning rate, from the named checkpoint (or from the start)
        if not killed_at:
            row.update({"killed": f"no (exit {p.returncode} before the moment)", "resumed": "-", "from step": "-",
                        "finished": "-", "final finite": "-"})
            row["log"] = last_line(log_path.read_text(errors="replace"))
            rows.append(row)
            continue
        text = log_path.read_text(errors="replace")
        at_kill = _ckpts(out)
        row["checkpoints at kill"] = ", ".join(f"{k} {v}" for k, v in at_kill.items()) or "none"
        if name == "during evaluation":  # step 2's eval metrics not logged yet, checkpoint-2 not saved yet
            row["eval running at kill"] = ("yes" if "'eval_kd_loss'" not in text and "'eval_loss'" not in text
                                           and not (out / "checkpoint-2").exists() else "no")
            killed_at += f"; evaluation running: {row['eval running at kill']}"
        row["killed"] = killed_at if nan else f"yes ({killed_at})"
        # resume
        t1 = time.time()
        resume = ["--resume-from-checkpoint", resume_arg] if resume_arg else []
        r = subprocess.run(cli_cmd(project) + argv + resume, cwd=d, env=env, capture_output=True, text=True,
                           timeout=600)
        (d / "resume.log").write_text(r.stdout + r.stderr)
        both = r.stdout + r.stderr
        m = re.search(r"(?:Continuing training from|Resuming training from checkpoint with epoch \d+ and) global "
                      r"step (\d+)", both)
        row["resume with"] = resume_arg or "(no resume: start again, as advised)"
        row["resume rc"] = r.returncode
        row["resume s"] = round(time.time() - t1, 1)
        row["resumed"] = "yes" if m else ("started over" if "Running training" in both else "no")
        row["from step"] = int(m.group(1)) if m else "-"
        summary = {}
        if (out / "distill.json").exists():
            try:
                summary = json.loads((out / "distill.json").read_text())
            except ValueError:
                pass
        row["finished"] = (f"yes ({summary.get('steps')} steps)" if r.returncode == 0 and (out / "final").exists()
                           else "no")
        st = out / "final" / "model.safetensors"
        fin = _nonfinite(st) if st.exists() else None
        row["final finite"] = "-" if not st.exists() else ("no" if fin else ("yes" if fin is False else "unreadable"))
        row["temp left after resume"] = ", ".join(sorted(x.name for x in out.glob("*tmp*"))) if out.exists() else ""
        row["resume last line"] = (error_line(r.stderr) if r.returncode else last_line(r.stderr))[:400]
        row["traceback"] = "Traceback (most recent call last)" in both
        rows.append(row)
        log(f"  kill {name}: {row}")
    return rows


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

COLUMNS = ("clean", "ok", "traceback", "silent success", "data lost", "left behind", "timeout", "bug (exit 3)",
           "other")


def _col(outcome):
    return outcome if outcome in COLUMNS else "other"


def shown_argv(argv):
    names = {"T": "<tiny>", "S": "<student>", "V": "<other-vocab>", "DIST": "<distilled>", "RUN": "<run>",
             "D": ".", "DATA": "<data.jsonl>", "SMALL": "<small.jsonl>", "PREP": "<prepared>"}
    out = []
    for a in argv:
        for k, v in names.items():
            a = a.replace("{" + k + "}", v)
        out.append(a if a and not re.search(r"[\s'\"{}\[\]]", a) else json.dumps(a))
    return "minitron " + " ".join(out)


def revision_text() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    rev = revision()
    # the results this run is about to replace do not make the code under test uncommitted
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return rev + (" + uncommitted" if dirty else "")


def class_table(results) -> list:
    """The classes of input probed: a line of description, and how many of their cases were clean."""
    lines = ["## Classes probed", "",
             "A class is a kind of hostile input; each is probed with several cases, across the commands it applies "
             "to. **clean**: refused cleanly, or (a control, an either-way case) succeeded without harm; **not "
             "clean**: every other outcome (listed below).", "",
             "| class | what it tries | cases | clean | not clean |", "|---|---|---:|---:|---:|"]
    for cls, what in CLASSES.items():
        rs = [r for r in results if r.get("cls") == cls]
        if not rs:
            continue
        skipped = sum(1 for r in rs if r["outcome"] == "skipped")
        good = sum(1 for r in rs if r["outcome"] in ("clean", "ok"))
        lines.append(f"| {cls} | {what} | {len(rs)}{f' ({skipped} skipped)' if skipped else ''} | {good} | "
                     f"{len(rs) - good - skipped} |")
    return lines + [""]


def write_report(results, kills, meta, out_dir: Path):
    groups = []
    for r in results:
        if r["group"] not in groups:
            groups.append(r["group"])
    lines = [
        "# Reliability: hostile inputs against every command",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- command: `{meta['command']}`",
        f"- git revision: {meta['revision']}",
        f"- mode: {meta['mode']} ({meta['mode_note']}), {meta['workers']} at a time; wall time "
        f"{meta['wall_s'] / 60:.1f} min (fixtures {meta['fixtures_s']:.0f} s, cases {meta['cases_s']:.0f} s, "
        f"kill-and-resume {meta['kill_s']:.0f} s)",
        "",
        "Each case runs the real CLI in a fresh folder on tiny fixtures (a random Llama, hidden 64, 2 layers, with the "
        "SmolLM2 tokenizer), offline. **clean**: refused with exit != 0 and a last stderr line `minitron <cmd>: error: "
        "...`, no traceback, sentinels intact, nothing partial left. **ok**: a control (or an either-way case) that "
        "succeeded. **left behind**: a failure that left new files/folders (or a stray temporary folder). **bug "
        "(exit 3)**: the CLI's internal-error exit. **other**: refused (a control that should have succeeded), "
        "unclear (exit != 0 without the one-line error as the last line; a bare `minitron: error:` is accepted "
        "only for the top-level cases, where no command was given), check failed (a case-specific check), setup "
        "failed. A case with several problems is counted under the most severe (order: data lost, timeout, "
        "traceback, silent success, left behind, bug, check failed, refused, unclear).",
        "",
    ]
    if meta.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    lines += ["## Outcomes per command", "",
              "| command | cases | " + " | ".join(COLUMNS) + " |",
              "|---|---:|" + "---:|" * len(COLUMNS)]
    total = {c: 0 for c in COLUMNS}
    for g in groups:
        rs = [r for r in results if r["group"] == g]
        cnt = {c: sum(1 for r in rs if _col(r["outcome"]) == c) for c in COLUMNS}
        for c in COLUMNS:
            total[c] += cnt[c]
        lines.append(f"| {g} | {len(rs)} | " + " | ".join(str(cnt[c]) for c in COLUMNS) + " |")
    lines.append(f"| **total** | **{len(results)}** | " + " | ".join(f"**{total[c]}**" for c in COLUMNS) + " |")
    n_fail = sum(1 for r in results if r["expect"] == "fail")
    n_succ = sum(1 for r in results if r["expect"] == "succeed")
    lines += ["", f"{len(results)} cases: {n_fail} should be refused, {n_succ} are controls that should succeed, "
              f"{len(results) - n_fail - n_succ} may go either way (refuse cleanly or succeed without harm).", ""]
    lines += class_table(results)
    if kills:
        lines += ["## Kill -9 and resume", "",
                  f"`{shown_argv(KILL_DISTILL)}` killed with SIGKILL at a moment, then rerun with "
                  "`--resume-from-checkpoint true`. The last row does not kill: a learning rate of 1e30 makes the "
                  "weights non-finite; the run must stop by itself and name a checkpoint, and the rerun follows its "
                  "advice (learning rate 1e-3, `--resume-from-checkpoint` that checkpoint).", "",
                  "| moment | killed | checkpoints at kill | resume exit | resumed | from step | finished | "
                  "final weights finite | temp folders left |", "|---|---|---|---:|---|---:|---|---|---|"]
        for k in kills:
            lines.append(f"| {k['scenario']} | {k['killed']} | {k.get('checkpoints at kill', '-')} | "
                         f"{k.get('resume rc', '-')} | {k['resumed']} | {k['from step']} | {k['finished']} | "
                         f"{k['final finite']} | {k.get('temp left after resume') or 'none'} |")
        for k in kills:
            if k.get("first run"):
                where = ("(the last line)" if k.get("error is last line") else
                         "(not the last line of its output: a progress bar is redrawn after it)")
                big = k.get("named checkpoint max |w|")
                lines.append(f"\n- {k['scenario']}: the first run's message {where}: `{k['first run']}`"
                             + (f"; the largest weight in the checkpoint it names is {big:.3g}" if big is not None
                                else ""))
        bad = [k for k in kills if k.get("resume rc") not in (0, None) or k.get("traceback")]
        for k in bad:
            lines.append(f"\n- {k['scenario']}: resume {'printed a traceback; ' if k.get('traceback') else ''}"
                         f"last line `{k.get('resume last line', '')}`")
        nan = next((r for r in results if r["name"] == "distill-nan-lr-1e6"), None)
        if nan:
            lines += ["", f"NaN (`distill --learning-rate 1e6 --max-steps 4 --save-steps 1`): exit {nan['rc']}, "
                      f"outcome **{nan['outcome']}**; last line `{nan['last_stderr']}`"
                      + (f"; {'; '.join(nan['details'].get('check', []))}" if nan["details"].get("check") else "")]
        lines.append("")
    bad = [r for r in results if r["outcome"] not in ("clean", "ok", "skipped")]
    lines += [f"## Cases that are not clean ({len(bad)})", ""]
    for g in groups:
        rs = [r for r in bad if r["group"] == g]
        if not rs:
            continue
        lines += [f"### {g}", ""]
        for r in rs:
            extra = []
            if len(r["flags"]) > 1:
                extra.append("also " + ", ".join(f for f in r["flags"] if f != r["outcome"]))
            for k in ("lost", "left", "check", "wrote", "wrote inside", "message", "signal"):
                if r["details"].get(k):
                    extra.append(f"{k}: " + "; ".join(r["details"][k]))
            why = f" ({r['why']})" if r.get("why") else ""
            last = r["last_stderr"] or "(stderr empty)"
            env = "".join(f"{k}={json.dumps(v)} " for k, v in (r.get("env") or {}).items())
            lines.append(f"- `{r['name']}` [{r.get('cls', '')}] — **{r['outcome']}** (exit {r['rc']}, expected "
                         f"{r['expect']}){why}: `{env}{shown_argv(r['argv'])}`" + (f"; {'; '.join(extra)}" if extra
                                                                                  else "")
                         + f"\n  - last stderr line: `{last.replace('`', '')}`"
                         + (f"\n  - error line: `{r['error_line'].replace('`', '')}`" if r.get("error_line") else ""))
        lines.append("")
    skipped = [r for r in results if r["outcome"] == "skipped"]
    if skipped:
        lines += [f"## Skipped ({len(skipped)})", ""]
        lines += [f"- `{r['name']}` [{r.get('cls', '')}]: {r['last_stderr']}" for r in skipped] + [""]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reliability.md").write_text("\n".join(lines).rstrip() + "\n")
    (out_dir / "reliability.json").write_text(json.dumps({"meta": meta, "cases": results, "kill_and_resume": kills},
                                                         indent=1, default=str))
    return out_dir / "reliability.md"


# --------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", metavar="SUBSTRING", help="run the cases whose name contains this "
                    "(repeatable); the kill-and-resume part runs only if 'kill' is given or --only is absent")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--mode", choices=("fork", "subprocess"), default="fork")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, help="work folder (default: a new temporary folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-kill", action="store_true", help="skip the kill-and-resume measurements")
    ap.add_argument("--project", type=Path, default=ROOT, help="the folder holding the minitron_hf package to test")
    ap.add_argument("--results", type=Path, default=None, help="where to write reliability.md/json (default: "
                    "benchmarks/results; with --only: the work folder)")
    ap.add_argument("--_build-models", dest="build_models", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.build_models:
        build_models(args.build_models)
        return 0

    all_cases = cases()
    names = [c.name for c in all_cases]
    assert len(names) == len(set(names)), "duplicate case names"
    selected = [c for c in all_cases if not args.only or any(s in c.name for s in args.only)]
    if args.list:
        for c in selected:
            print(f"{c.name:<45} {c.group:<16} {c.cls:<26} should {c.expect:<8} {shown_argv(c.argv)[:300]}")
        print(f"{len(selected)} cases")
        return 0

    t_start = time.time()
    project = args.project.resolve()
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", PYTHONUNBUFFERED="1", HF_HUB_DISABLE_TELEMETRY="1",
               MINITRON_CACHE=os.environ.get("MINITRON_CACHE", str(Path.home() / ".cache" / "minitron_hf")),
               PYTHONPATH=os.pathsep.join([str(project)] + [p for p in os.environ.get("PYTHONPATH", "").split(
                   os.pathsep) if p]))
    work = (args.work or Path(tempfile.mkdtemp(prefix="minitron-reliability-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    log(f"work folder {work}; project {project}; {len(selected)} cases")
    notes = []
    fx, fx_notes = build_fixtures(work, env, project, log)
    notes += fx_notes
    t_fix = time.time() - t_start
    fixture_digest = {k: digest(v) for k, v in fx.items() if k in ("T", "S", "V", "DIST", "DATA", "SMALL", "PREP")}

    mode, mode_note = args.mode, ""
    if mode == "fork":
        # the parent imports what the CLI imports (nothing runs torch here: forking after torch ops is unsafe)
        os.environ.update(env)
        sys.path.insert(0, str(project))
        try:
            import minitron_hf.cli as cli

            cli.make_parser()
            mode_note = "each case forked from a parent that imported minitron_hf.cli"
        except BaseException as e:  # noqa: BLE001  an import-time failure: every case must show it, as a process
            mode = "subprocess"
            mode_note = f"fork fell back to subprocess: importing minitron_hf.cli failed ({e!r})"
            notes.append(f"importing minitron_hf.cli failed in the parent ({type(e).__name__}: {e}); every case ran as "
                         f"`python -m minitron_hf.cli`")
        else:
            import importlib

            for mod in ("minitron_hf.pruning.prune", "minitron_hf.distill.run", "minitron_hf.pipeline",
                        "minitron_hf.export.hub", "minitron_hf.export.fp8", "minitron_hf.export.trtllm",
                        "minitron_hf.eval.code", "minitron_hf.alignment.sft", "minitron_hf.alignment.rpo",
                        "minitron_hf.data", "minitron_hf.loading"):
                try:
                    importlib.import_module(mod)
                except BaseException:  # noqa: BLE001  the child will hit (and print) the same failure
                    pass
            try:  # pre-read the embedded default data set (a cache only; no torch work)
                from minitron_hf.data import python_docs_documents

                python_docs_documents()
            except BaseException:  # noqa: BLE001
                pass
    if mode == "subprocess" and not mode_note:
        mode_note = "each case is `python -m minitron_hf.cli`"

    t1 = time.time()
    log(f"running {len(selected)} cases ({mode}, {args.workers} at a time)")
    results = run_cases(selected, work, fx, env, mode, project, args.workers, log)
    t_cases = time.time() - t1
    for k, before in fixture_digest.items():
        if digest(fx[k]) != before:
            notes.append(f"the shared fixture {k} ({fx[k].name}) changed during the run: some case wrote into its "
                         f"input")

    kills = []
    t2 = time.time()
    if not args.no_kill and (not args.only or any("kill" in s for s in args.only)):
        log("kill-and-resume")
        kills = kill_and_resume(work, fx, env, project, log)
    t_kill = time.time() - t2

    wall = time.time() - t_start
    meta = {"date": datetime.date.today().isoformat(), "machine": machine(),
            "command": ".venv/bin/python benchmarks/reliability.py" + "".join(
                f" {a}" for a in sys.argv[1:]),
            "revision": revision_text(), "mode": mode, "mode_note": mode_note, "workers": args.workers,
            "wall_s": wall, "fixtures_s": t_fix, "cases_s": t_cases, "kill_s": t_kill, "notes": notes,
            "work": str(work)}
    out_dir = args.results or (RESULTS if not args.only else work)
    path = write_report(results, kills, meta, out_dir)
    counts = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    log(f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; wrote {path}")
    if not args.keep and not args.work and not args.only:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"work folder kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
