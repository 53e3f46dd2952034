"""The reliability probe's case pool (``benchmarks/reliability.py``): each case of the table runs in its own folder,
forked from this process (or as ``python -m minitron_hf.cli``), a few at a time, and its outcome is classified
(``clean``, ``traceback``, ``data lost``, ... : see the probe's docstring)."""

from __future__ import annotations

import atexit
import fnmatch
import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# placeholders in argv, env values and YAML: fixture paths and the case's own folder
#   {T} tiny teacher, {S} tiny student (same shapes, other seed), {V} tiny model with a vocabulary (1024) smaller than
#   its tokenizer's (49152), {DIST} a finished distill output folder, {RUN} a finished `minitron run` folder,
#   {D} the case folder, {DATA} a small local jsonl data file (400 documents), {SMALL} a smaller one (60),
#   {PREP} {SMALL} prepared by `minitron data prepare` with the tiny model's tokenizer
TOKENS = ("T", "S", "V", "DIST", "RUN", "D", "DATA", "SMALL", "PREP")


class SkipCase(Exception):
    """Raised by a setup that cannot build its situation here (e.g. no tmpfs mount): the case is skipped."""


def sub(s, paths):
    """``s`` with the placeholders filled from ``paths`` (see :func:`fx_paths`)."""
    s = str(s)
    for k in TOKENS:
        s = s.replace("{" + k + "}", paths[k])
    return s


def fx_paths(fx, d):
    """The placeholders' values for the case folder ``d``: the fixtures' paths, and ``d`` itself as {D}."""
    return {**{k: str(v) for k, v in fx.items()}, "D": str(d)}


def run_cleanups(cleanups):
    """Run setups' cleanups, the last one first."""
    for c in reversed(cleanups):
        try:
            c()
        except Exception:  # noqa: BLE001  a cleanup must not stop the others
            traceback.print_exc()


def unmount(p: Path):
    subprocess.run(["umount", "-l", str(p)], capture_output=True)


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


def cli_cmd(project: Path) -> list:
    """The real CLI of ``project`` (on PYTHONPATH in the children's environment)."""
    return [sys.executable, "-m", "minitron_hf.cli"]


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


def prepare(case, work: Path, fx: dict):
    """The case's folder, built by its setup, with its sentinels in place: (folder, $TMPDIR, argv, what
    :func:`finish` compares against)."""
    d = work / "cases" / case.name
    tmp = work / "tmp" / case.name
    for p in (d, tmp):
        if p.exists():
            for q in p.iterdir():  # a tmpfs an interrupted earlier run left mounted
                if q.is_dir() and os.path.ismount(q):
                    unmount(q)
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
    """Run the ``selected`` cases, ``workers`` at a time; their results in the order of ``selected``."""
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
                            run_cleanups([prep["cleanup"]])
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
                run_cleanups([prep["cleanup"]])
    order = {c.name: i for i, c in enumerate(selected)}
    return sorted(results, key=lambda r: order[r["name"]])
