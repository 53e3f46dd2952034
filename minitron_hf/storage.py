"""Telling a full disk from other write failures, whoever reports it.

The OS says ``ENOSPC``/``EDQUOT``; safetensors (Rust) says "No space left" or "os error 28". torch's serializer
(``torch.save``: optimizer, scheduler and RNG states of a checkpoint) says neither: its stream writer fails with
``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598`` (a short write) or
``PytorchStreamWriter failed writing file data/0: file write failed``, and the cause it chains is
``basic_ios::clear: iostream error``, without an errno. Such a failure is a full disk when the device it wrote to
has (almost) no space left, which :func:`no_space` checks while the partial file is still there.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

LOW_SPACE_BYTES = 64 * 2**20
"""Free space below which a failed torch write counts as a full disk (a short write leaves next to nothing)."""

_NO_SPACE_TEXT = ("No space left", "StorageFull", "os error 28", "Disk quota exceeded")
_TORCH_WRITE_TEXT = ("PytorchStreamWriter failed writing file", "unexpected pos", "file write failed")


def _chain(e: BaseException):
    return (x for x in (e, e.__cause__, e.__context__) if x is not None)


def torch_write_failed(e: BaseException) -> bool:
    """Whether ``e`` is torch's stream writer failing to write a file (a short or failed write)."""
    return any(isinstance(x, RuntimeError) and any(s in str(x) for s in _TORCH_WRITE_TEXT) for x in _chain(e))


def free_bytes(path: str | Path) -> int | None:
    """Bytes free to this user on the device of ``path`` (or of its nearest existing parent); None if unknown."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def no_space(e: BaseException, where: str | Path | None = None) -> bool:
    """A full disk (or quota), as the OS, safetensors (Rust) or torch (PytorchStreamWriter) report it. torch's
    writer errors carry no errno: with ``where`` (the folder being written, before the partial files are removed)
    they count as a full disk when that device has less than :data:`LOW_SPACE_BYTES` free."""
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(x) for s in _NO_SPACE_TEXT):
            return True
    if where is not None and torch_write_failed(e):
        free = free_bytes(where)
        return free is not None and free < LOW_SPACE_BYTES
    return False
