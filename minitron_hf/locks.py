"""One command per output folder: an output checked by :func:`~minitron_hf.outputs.check_output` inside a
:func:`command_scope` (every ``minitron`` command, hence every entry script) is locked until the command ends.

A lock is an ``flock`` on a file under ``$MINITRON_CACHE/locks/``, named by a hash of the output's resolved path and
holding the holder's PID, start time, command and output. Nothing is written beside or inside the output (a stage
check of ``minitron run`` may lock ``out/prune/model`` before ``out`` exists, and must not create it). The kernel
releases an flock when its process dies, so a killed command never blocks the next one: its file is then taken
over with a warning. A second command on the same folder, or on a folder inside one in use, gets one line naming
the holder. Ranks of one launch (``RANK`` > 0) and the child processes of a locking command (which inherit
``MINITRON_LOCK_OWNER``) share the lock of their main process. Outside a command scope (the library called from
Python) nothing is locked.

Scope: commands on one machine, or on several that share ``MINITRON_CACHE`` on a filesystem with working flock
(NFSv4, Lustre with ``-o flock``). Where the lock folder cannot be written, the command warns and runs unlocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import MinitronError

logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".minitron-lock"
_SCOPES: list[dict] = []  # per open command scope: {resolved output: (fd, lock file)}
_INPUTS: list[list] = []  # per open command scope: files read outside any config field (the config file itself)


def note_input(path) -> None:
    """Record a file the current command reads that no config field names (its ``--config`` YAML): every output
    checked later in the command must not be, contain or lie inside it. No-op outside a command scope."""
    if _INPUTS and path:
        _INPUTS[-1].append(Path(path).expanduser())


def command_inputs() -> list:
    """The files :func:`note_input` recorded in the open command scopes."""
    return [p for scope in _INPUTS for p in scope]


class OutputBusyError(MinitronError):
    """An output folder another running command is writing."""


def _lock_file(folder: Path, res: Path) -> Path:
    return folder / (hashlib.sha256(str(res).encode()).hexdigest()[:32] + LOCK_SUFFIX)


def _lock_holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe_holder(h: dict) -> str:
    parts = [f"PID {h.get('pid', '?')}"]
    if h.get("started"):
        parts.append(f"started {h['started']}")
    if h.get("command"):
        parts.append(f"`{h['command'][:120]}`")
    return ", ".join(parts)


def _shared_with(h: dict) -> bool:
    """The holder is this process's main process (a rank or a child of the command that took the lock)."""
    return str(h.get("pid")) in (os.environ.get("MINITRON_LOCK_OWNER"), str(os.getpid()))


def _held_elsewhere(path: Path) -> dict | None:
    """The holder of the lock file ``path`` when another process holds it, else None (nothing is taken)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(path)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _busy(field: str, shown: str, holder: dict, inside: Path | None = None) -> OutputBusyError:
    where = f" lies inside {inside}, which" if inside is not None else ""
    return OutputBusyError(f"{field}={shown!r}{where} is being written by another minitron command "
                           f"({_describe_holder(holder)}); wait for it to finish, or choose another folder")


def lock_output(res: Path, folder: Path, field: str = "output", shown=None) -> None:
    """Lock the output folder ``res`` (resolved), with a lock file in ``folder``, for the rest of the current :func:`command_scope` (no-op outside
    one, on ranks other than 0, and where it or a folder around it is already this command's). A folder another
    command holds, or one inside a folder another command holds, is an :class:`OutputBusyError` naming it."""
    if not _SCOPES or os.environ.get("RANK", "0") not in ("", "0"):
        return
    res = Path(res)
    mine = {p for scope in _SCOPES for p in scope}
    if res in mine:
        return
    shown = str(shown if shown is not None else res)
    for around in [res, *res.parents]:
        if around in mine:
            break
        holder = _held_elsewhere(_lock_file(folder, around))
        if holder is not None and not _shared_with(holder):
            raise _busy(field, shown, holder, None if around == res else around)
    path = _lock_file(folder, res)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _lock_holder(path)
                if _shared_with(holder):
                    return
                raise _busy(field, shown, holder) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and our lock: take the new one
        else:
            raise OutputBusyError(f"{field}={shown!r}: could not take the lock {path}")
    except OSError as e:  # a read-only cache, a filesystem without flock: go on unlocked, and say so
        logger.warning("cannot lock %s in %s (%s); two commands writing it at once would not be stopped", shown,
                       path.parent, e.strerror or e)
        return
    previous = _lock_holder(path)
    if previous.get("pid"):
        logger.warning("took over the lock of %s left by a command that is gone (%s)", shown,
                       _describe_holder(previous))
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(["minitron", *sys.argv[1:]]), "output": str(res)}).encode())
    _SCOPES[-1][res] = (fd, path)
    os.environ["MINITRON_LOCK_OWNER"] = str(os.getpid())


def _release(fd: int, path: Path) -> None:
    try:
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    except OSError:
        pass
    os.close(fd)


@contextlib.contextmanager
def command_scope():
    """The span of one command: output folders checked by :func:`~minitron_hf.outputs.check_output` inside it stay
    locked until it ends, however it ends (a crash or a kill releases the flock with the process)."""
    held: dict = {}
    _SCOPES.append(held)
    _INPUTS.append([])
    owner = os.environ.get("MINITRON_LOCK_OWNER")
    try:
        yield
    finally:
        _SCOPES.remove(held)
        _INPUTS.pop()
        for fd, path in reversed(list(held.values())):
            _release(fd, path)
        if held and not _SCOPES:
            if owner is None:
                os.environ.pop("MINITRON_LOCK_OWNER", None)
            else:
                os.environ["MINITRON_LOCK_OWNER"] = owner
