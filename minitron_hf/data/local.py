"""Local sources: which files a path names, and their fingerprint (the checks made before anything is written are
:mod:`.checks`).

- :func:`local_files`: the file itself, or every ``.json``/``.jsonl``/``.parquet``/``.txt`` file under a directory,
  extensions matched case-insensitively (``D.JSONL`` is jsonl), symlinked subfolders followed (each real folder read
  once, so a link to an ancestor is no loop), hidden files and folders skipped. Every file left out is named in the
  log, once per process.
- :func:`files_fingerprint`: what a prepared folder (and the prepared-data cache) is keyed by; see its docstring.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from .base import LOCAL_EXTENSIONS, DataError

logger = logging.getLogger(__name__)

FULL_HASH_BYTES = 256 * 2**20  # sources up to this size are fingerprinted by their full content
EDGE_BYTES = 2**20  # beyond it: the first and last MiB of each file ...
SAMPLES, SAMPLE_BYTES = 16, 64 * 2**10  # ... and 16 chunks of 64 KiB at evenly spaced offsets
_logged: set[str] = set()


def _log_once(level: int, msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        logger.log(level, msg)


def names_of(paths: list[Path], root: Path) -> str:
    shown = [str(p.relative_to(root)) if root in p.parents else str(p) for p in paths[:5]]
    return ", ".join(shown) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def local_files(path: Path, data: str | None = None) -> list[Path]:
    """The file itself, or every supported file under the directory (see the module), sorted."""
    data = str(path) if data is None else data
    if not path.is_dir():
        if path.suffix.lower() not in LOCAL_EXTENSIONS:
            raise DataError(f"data={data!r}: unsupported file type {path.suffix!r}; allowed: "
                            f"{', '.join(LOCAL_EXTENSIONS)} (in any case)")
        return [path]
    files: list[Path] = []
    skipped: dict[str, list[Path]] = {}
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
        except OSError as e:  # a symlink loop (ELOOP) or a link to nothing
            skipped.setdefault(f"unreadable folder ({e.strerror})", []).append(d)
            continue
        if (st.st_dev, st.st_ino) in seen:  # a link to a folder read already (an ancestor: a loop)
            skipped.setdefault("folder already read through another path (symlink)", []).append(d)
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"data={data!r}: cannot list the folder {d} ({e.strerror or e})") from None
        for e in entries:
            p = Path(e.path)
            if e.name.startswith("."):
                skipped.setdefault("hidden", []).append(p)
                continue
            try:
                is_dir, is_file = e.is_dir(), e.is_file()  # both follow symlinks
            except OSError:
                is_dir = is_file = False
            if is_dir:
                stack.append(p)
            elif not is_file:
                skipped.setdefault("not a regular file (a broken symlink?)", []).append(p)
            elif p.suffix.lower() not in LOCAL_EXTENSIONS:
                skipped.setdefault(f"unsupported extension (allowed: {', '.join(LOCAL_EXTENSIONS)})", []).append(p)
            else:
                files.append(p)
    for why, paths in skipped.items():
        _log_once(logging.INFO if why == "hidden" else logging.WARNING,
                  f"data={data!r}: skipped {len(paths)} {why}: {names_of(sorted(paths), path)}")
    if not files:
        left = "; skipped: " + "; ".join(f"{len(v)} {k}: {names_of(sorted(v), path)}" for k, v in skipped.items()) \
            if skipped else ""
        raise DataError(f"data={data!r}: no {', '.join(LOCAL_EXTENSIONS)} files in this directory{left}")
    return sorted(files)


# --------------------------------------------------------------------------------------------- fingerprint


def files_fingerprint(files: list[Path]) -> str:
    """The identity of the content of local files, for the key of a prepared folder and of the prepared-data cache.

    Rule: when the files hold at most ``FULL_HASH_BYTES`` (256 MiB) in all, the sha256 of their full content (with
    each file's path and size): any change of any byte gives a new key, whatever the file's size and modification
    time say, and touching a file without changing it keeps the key. Beyond 256 MiB, reading everything for a key
    would cost a full pass over the data: each file then counts by its path, size, modification time (ns) and the
    sha256 of its first and last MiB and of 16 chunks of 64 KiB at evenly spaced offsets (files up to 3 MiB whole).
    An edit of a large source that keeps both the size and the modification time and touches none of those bytes is
    then not seen: prepare such data once with ``minitron data prepare`` (prepare it again after editing it)."""
    stats = [(f, f.stat()) for f in files]
    full = sum(st.st_size for _, st in stats) <= FULL_HASH_BYTES
    h = hashlib.sha256(b"full\0" if full else b"sampled\0")
    for f, st in stats:
        h.update(f"{f.resolve()}\0{st.st_size}\0".encode())
        if not full:
            h.update(f"{st.st_mtime_ns}\0".encode())
        h.update(_content_digest(f, st.st_size, full))
    return h.hexdigest()


def _content_digest(f: Path, size: int, full: bool) -> bytes:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        if full or size <= 2 * EDGE_BYTES + SAMPLES * SAMPLE_BYTES:
            while block := fh.read(2**20):
                h.update(block)
            return h.digest()
        h.update(fh.read(EDGE_BYTES))
        span = size - 2 * EDGE_BYTES - SAMPLE_BYTES
        for k in range(SAMPLES):
            fh.seek(EDGE_BYTES + span * k // (SAMPLES - 1))
            h.update(fh.read(SAMPLE_BYTES))
        fh.seek(size - EDGE_BYTES)
        h.update(fh.read(EDGE_BYTES))
    return h.digest()
