"""Checks of a source that need no full read, made before ``minitron data prepare`` writes anything: the path
exists, every file is readable and looks like its extension (parquet magic bytes and schema, the first jsonl row
and its text field, the first bytes of json/txt), and not every file is empty. What only a full read finds (a bad
line 5000) is a :class:`~minitron_hf.data.base.DataError` naming the file and the line, raised while reading."""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

from .base import MANIFEST, DataError
from .local import local_files, names_of
from .sources import DataConfig, is_embedded, looks_like_path, missing_path_error, parquet_file, row_text

_SNIFF_BYTES = 64 * 2**10


def check_source(cfg: DataConfig) -> None:
    """Every check of one source that needs no full read, made before anything is written: the path exists, every
    file is readable and looks like its extension (see :func:`check_local_file`), and not all of them are empty. The
    embedded default and Hub ids pass (a Hub dataset is only known once it is read)."""
    if not isinstance(cfg.data, str) or is_embedded(cfg.data):
        return
    path = Path(cfg.data).expanduser()
    if not path.exists():
        if looks_like_path(cfg.data):
            raise missing_path_error(cfg.data)
        return
    if (path / MANIFEST).is_file():
        raise DataError(f"data={cfg.data!r} is a prepared token folder; it holds tokens, not documents")
    files = local_files(path, cfg.data)
    sizes = [check_local_file(f, cfg) for f in files]
    if not any(sizes):
        raise DataError(f"data={cfg.data!r} holds no text: {names_of(files, path)} "
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
        parquet_file(f, cfg)  # reads the footer only: the schema and the text column
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
        row_text(row, cfg, f"{f} line {lineno}")
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
