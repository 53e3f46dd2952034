"""The reliability probe's setups and checks (``benchmarks/reliability.py``): the rows of its case table
(``reliability_cases.py``, ``reliability_classes.py``) name them.

A setup is ``setup(d, fx)``: it builds the case's situation in its folder ``d`` from the fixtures ``fx`` (their
paths by placeholder key) and may return a cleanup, always run after the case. A check is
``check(d, rc, stdout, stderr) -> list of problems``. Most are made by a factory that takes the case's parameters
(``model(damage="truncate")``, ``check_names("data.jsonl")``)."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file

from reliability_run import RUNTIME, SkipCase, error_line, fx_paths, last_line, run_cleanups, run_cli, sub, unmount

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
            run_cleanups(cleanups)
            raise
        return (lambda: run_cleanups(cleanups)) if cleanups else None
    return f


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
    """setup: a copy of the fixture folder ``key`` at d/rel."""
    def f(d, fx):
        shutil.copytree(fx[key], d / rel, symlinks=True)
    return f


def copy_from_fixture(key, inside, rel):
    """setup: a copy of the folder ``inside`` of the fixture ``key`` at d/rel."""
    def f(d, fx):
        shutil.copytree(Path(fx[key]) / inside, d / rel)
    return f


def run_scores(rel):
    """setup: the fixture run's importance scores at d/rel."""
    return copy_from_fixture("RUN", "out/importance/scores", rel)


def other_shape_checkpoint(rel="ck"):
    """setup: a checkpoint of the fixture run's pruned student (hidden 32, intermediate 64; the tiny models have 64,
    128) at d/rel."""
    return copy_from_fixture("RUN", "out/distill/checkpoint-1", rel)


def copy_run(d: Path, fx):
    """setup: a private copy of the finished fixture run at d/run, its config pointing at the copy."""
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


def remove(rel, missing_ok=False):
    """setup: delete the file or folder d/rel (e.g. what a copied finished output needs to look unfinished)."""
    def f(d, fx):
        p = d / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=missing_ok)
    return f


def base_run_config(fx, out) -> dict:
    """A small whole run of the tiny teacher into ``out``: the {RUN} fixture's config, and the base of run_yaml's."""
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

def nonfinite(st: Path) -> bool | None:
    """True if a safetensors file holds a NaN/inf, None if it cannot be read. (numpy, not torch: this runs in the
    parent that forks the cases, which must not start torch's thread pool.)"""
    try:
        return any(not np.isfinite(a).all() for a in load_file(str(st)).values())
    except Exception:
        return None


def max_abs(st: Path) -> float | None:
    """The largest absolute weight in a safetensors file, None if it cannot be read."""
    try:
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
            bad = nonfinite(st)
            if bad:
                problems.append(f"non-finite weights kept in {st.parent.relative_to(d)}")
            elif bad is None:
                problems.append(f"unreadable weights in {st.parent.relative_to(d)}")
        if rc != 0:
            last = error_line(stderr)
            ok = False
            for n in re.findall(r"[\w./-]*checkpoint-\d+", last):
                for p in (Path(n), d / n, out / n):  # absolute, relative to the working folder, or to out
                    if (p / "model.safetensors").exists() and nonfinite(p / "model.safetensors") is False:
                        ok = True
            if not ok and "no checkpoint" not in last.lower():
                problems.append("the message names no checkpoint with finite weights")
        return problems
    return f


# ---- setups and checks of the classes of issue 35 ------------------------------------------------

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
        return lambda: unmount(p)
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


def doc_text(tag, i):
    return f"{tag} document {i}. " + " ".join(f"Line {j} of {tag} {i} says that code reads files and writes "
                                             f"tokens." for j in range(12))


def docs_jsonl(n, tag="doc", field_name="text") -> str:
    """n distinct documents, one JSON object a line."""
    return "".join(json.dumps({field_name: doc_text(tag, i)}) + "\n" for i in range(n))


def write_docs(rel, n, tag="doc"):
    """setup: n distinct documents at d/rel, written when the case runs (30000 are 21 MB)."""
    def f(d, fx):
        (d / rel).write_text(docs_jsonl(n, tag))
    return f


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

        pq.write_table(pa.table({"text": [doc_text(tag, i) for i in range(n)]}), str(d / rel))
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


def checks(*fs):
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
