"""The sandbox that runs generated programs (HumanEval and MBPP, :mod:`.code`): :func:`run_program` gives a
program's status ("passed", "failed", "timeout" or "memory"), :func:`sandbox_layers` the isolation in force on this
machine.

Each program runs in a fresh ``python -I`` process of its own session (a timeout kills its
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
"""

from __future__ import annotations

import functools
import marshal
import math
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

from .suite import EvalError


class SandboxError(EvalError):
    """The sandboxed interpreter could not be started."""


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


def spawn(code: str, timeout_s: float, memory_mb: int, capture: bool = False, kernel: bool = True
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
                raise SandboxError(f"cannot start the sandboxed interpreter: {e}") from e
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
    return spawn(code, timeout_s, memory_mb)[0]


@functools.lru_cache(maxsize=None)
def sandbox_layers() -> tuple[str, ...]:
    """The isolation layers in force for a program on this machine: ``netns`` or ``userns+netns`` (no
    network), ``landlock<ABI>`` (kernel-enforced write confinement, no exec, no TCP), ``uid65534`` (root
    dropped to nobody) and ``audit`` (the Python-level guard, always)."""
    status, out = spawn("import os\nprint(os.environ.get('MINITRON_SANDBOX', ''))\n", 10.0, 1024, capture=True)
    return tuple(x for x in out.decode().strip().split(",") if x) if status == "passed" else ()
