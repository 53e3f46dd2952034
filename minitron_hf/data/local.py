"""Local sources: which files a path names, a cheap check of each before anything is written, and their fingerprint.

- :func:`local_files`: the file itself, or every ``.json``/``.jsonl``/``.parquet``/``.txt`` file under a directory,
  extensions matched case-insensitively (``D.JSONL`` is jsonl), symlinked subfolders followed (each real folder read
  once, so a link to an ancestor is no loop), hidden files and folders skipped. Every file left out is named in the
  log, once per process.
- :func:`check_source`: existence, readability and a format sniff of every file (parquet magic and schema, the first
  jsonl row and its text field, the first bytes of json/txt) before ``minitron data prepare`` writes anything. What
  only a full read finds (a bad line 5000) is a :class:`~minitron_hf.data.sources.DataError` naming the file and the
  line, raised while reading.
- :func:`files_fingerprint`: what a prepared folder (and the prepared-data cache) is keyed by; see its docstring.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
from pathlib import Path

from .sources import LOCAL_EXTENSIONS, MANIFEST, DataConfig, DataError, is_embedded, _looks_like_path, _row_text, \
    missing_path_error

logger = logging.getLogger(__name__)

FULL_HASH_BYTES = 256 * 2**20  # sources up to this size are fingerprinted by their full content
EDGE_BYTES = 2**20  # beyond it: the first and last MiB of each file ...
SAMPLES, SAMPLE_BYTES = 16, 64 * 2**10  # ... and 16 chunks of 64 KiB at evenly spaced offsets
_SNIFF_BYTES = 64 * 2**10
_logged: set[str] = set()


def _log_once(level: int, msg: str) -> None:
    if msg not in _logged:
        _logged.add(msg)
        logger.log(level, msg)


def _names(paths: list[Path], root: Path) -> str:
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
                  f"data={data!r}: skipped {len(paths)} {why}: {_names(sorted(paths), path)}")
    if not files:
        left = "; skipped: " + "; ".join(f"{len(v)} {k}: {_names(sorted(v), path)}" for k, v in skipped.items()) \
            if skipped else ""
        raise DataError(f"data={data!r}: no {', '.join(LOCAL_EXTENSIONS)} files in this directory{left}")
    return sorted(files)


# --------------------------------------------------------------------------------------------- checks


def check_source(cfg: DataConfig) -> None:
    """Every check of one source that needs no full read, made before anything is written: the path exists, every
    file is readable and looks like its extension (see :func:`check_local_file`), and not all of them are empty. The
    embedded default and Hub ids pass (a Hub dataset is only known once it is read)."""
    if not isinstance(cfg.data, str) or is_embedded(cfg.data):
        return
    path = Path(cfg.data).expanduser()
    if not path.exists():
        if _looks_like_path(cfg.data):
            raise missing_path_error(cfg.data)
        return
    if (path / MANIFEST).is_file():
        raise DataError(f"data={cfg.data!r} is a prepared token folder; it holds tokens, not documents")
    files = local_files(path, cfg.data)
    sizes = [check_local_file(f, cfg) for f in files]
    if not any(sizes):
        raise DataError(f"data={cfg.data!r} holds no text: {_names(files, path)} "
                        f"{'is' if len(files) == 1 else 'are'} empty")


def check_local_file(f: Path, cfg: DataConfig) -> int:
    """A cheap look at one file (its first 64 KiB; a parquet file's footer): readable, and what its extension says.
    Returns its size."""
    where = f"data={cfg.data!r}: {f}"
    kind = f.suffix.lower()
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
            lineno, first = _first_line(fh) if kind == ".jsonl" else (0, b"")
            tail = b""
            if kind == ".parquet" and size >= 8:
                fh.seek(-4, os.SEEK_END)
                tail = fh.read(4)
    except OSError as e:
        raise DataError(f"{where} cannot be read ({e.strerror or e}); fix its permissions or remove it") from None
    if kind == ".parquet":
        if size < 12 or head[:4] != b"PAR1" or tail != b"PAR1":
            raise DataError(f"{where} is not a parquet file (it does not start and end with the PAR1 magic bytes); "
                            f"convert it, or give it the extension of what it holds")
        from .sources import _parquet_file

        _parquet_file(f, cfg)  # reads the footer only: the schema and the text column
    elif kind == ".txt":
        _check_utf8(head, size, where)
    elif kind == ".json":
        if size:
            _check_utf8(head, size, where)
        start = head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")[:1]
        if not start:
            raise DataError(f"{where} is empty; a .json file holds one JSON object or a list of objects")
        if start not in "[{":
            raise DataError(f"{where} is not JSON (it starts with {start!r}); a .json file holds one JSON object or "
                            f"a list of objects (one object per line: name it .jsonl)")
    elif kind == ".jsonl" and first.strip():
        try:
            row = json.loads(first.removeprefix(codecs.BOM_UTF8))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{where} line {lineno} is not valid JSON ({getattr(e, 'msg', e)})") from None
        _row_text(row, cfg, f"{f} line {lineno}")
    return size


def _first_line(fh) -> tuple[int, bytes]:
    """(1-based number, content) of the first non-blank line of a jsonl file; (0, b"") if there is none."""
    fh.seek(0)
    for i, line in enumerate(fh, 1):
        if line.strip():
            return i, line
    return 0, b""


def _check_utf8(head: bytes, size: int, where: str) -> None:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=size <= len(head))
    except UnicodeDecodeError as e:
        raise DataError(f"{where} is not UTF-8 text (undecodable byte at offset {e.start}); convert it to UTF-8 "
                        f"or remove it") from None


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
