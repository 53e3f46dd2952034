"""Sources: where documents come from, how they are read without holding them, and which split each one is in.

- ``python-docs`` (the embedded default): ``pydoc_data.topics`` (documentation prose) and the standard
  library's own ``.py`` sources, read at run time from the running Python, never copied into the repo.
- a local file or directory: ``.jsonl``/``.json``/``.parquet`` (text in ``text_field``) or ``.txt`` (one
  document per file), extensions in any case, symlinked subfolders followed (:mod:`minitron_hf.data.local`; files
  left out are named in the log). jsonl and parquet are read incrementally (a line / a row group at a time); a
  ``.json`` file is one JSON document and is read whole, so use jsonl for large corpora. A UTF-8 BOM is accepted.
- a folder written by ``minitron data prepare`` (it holds ``manifest.json``): token shards, read as they are.
- anything else: a Hub dataset id, read with ``datasets.load_dataset(data, data_config, split=..., streaming=True)``.

Documents are yielded one at a time by :func:`iter_documents`: memory is bounded by one document (one row group
for parquet), never by the dataset. Exact duplicates are dropped by the caller with a set of 8-byte digests.
Each document's split follows from a stable hash of (split_seed, sha256 of its text), so train / validation /
calibration never overlap and do not depend on load order, on where a file lives, or on how many processes
read it.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import logging
import re
import sys
import sysconfig
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from pydoc_data.topics import topics

from ..config import check_value
from .base import DEFAULT_DATA, LOCAL_EXTENSIONS, MANIFEST, SPLITS, DataError  # noqa: F401  (the package's names)
from .local import files_fingerprint, local_files

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the text comes from, how it is split, and how much of it a run may use."""

    data: str | list[dict] = field(default=DEFAULT_DATA, metadata={"help": "'python-docs' (embedded default), a "
                                   "local file or directory (jsonl, json, parquet, txt), a folder written by "
                                   "`minitron data prepare`, or a Hub dataset id. In YAML also a blend: a list of "
                                   "{data: ..., weight: ...} (other data keys may be set per source)"})
    data_config: str | None = field(default=None, metadata={"help": "Hub dataset config name"})
    data_split: str = field(default="train", metadata={"help": "split of the Hub dataset to read (local files are "
                            "read whole; train/validation/calibration are cut from the documents afterwards)"})
    text_field: str = field(default="text", metadata={"help": "column holding the text (json/jsonl/parquet/Hub)"})
    max_documents: int | None = field(default=None, metadata={"help": "keep at most this many documents (the first "
                                      "ones in load order, after empty and duplicate texts are dropped); with "
                                      "streaming: the documents prepared for validation and calibration (default "
                                      "20000)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the deterministic split and shuffle"})
    validation_fraction: float = field(default=0.05, metadata={"help": "share of documents held out for validation"})
    calibration_fraction: float = field(default=0.05, metadata={"help": "share of documents for importance "
                                        "calibration (disjoint from train and validation)"})
    max_epochs: int = field(default=1, metadata={"help": "passes over a source's train split a run may make; a run "
                            "that needs more tokens than that is refused before training"})
    num_proc: int = field(default=1, metadata={"help": "processes that tokenize when the data is prepared (on the "
                          "fly into the cache, or by `minitron data prepare`)"})
    streaming: bool = field(default=False, metadata={"help": "tokenize and pack the train split on the fly from a Hub "
                            "IterableDataset instead of preparing it on disk (for data that does not fit locally); "
                            "validation and calibration blocks are still prepared (they are small)"})

    def __post_init__(self):
        """Every value that can be checked without reading data (each source of a blend too); raises
        :class:`DataError` naming the field."""
        for c, _ in self.sources():
            for name in ("validation_fraction", "calibration_fraction"):
                v = getattr(c, name)
                if not 0 <= v < 1:
                    raise DataError(f"{name}={v} must be in [0, 1)")
            if c.validation_fraction + c.calibration_fraction >= 1:
                raise DataError(f"validation_fraction + calibration_fraction = "
                                f"{c.validation_fraction + c.calibration_fraction} must be < 1 (train needs documents)")
            if c.max_documents is not None and c.max_documents < 1:
                raise DataError(f"max_documents={c.max_documents} must be >= 1 (or unset for all documents)")
        if self.max_epochs < 1:
            raise DataError(f"max_epochs={self.max_epochs} must be >= 1")
        if self.num_proc < 1:
            raise DataError(f"num_proc={self.num_proc} must be >= 1")

    def sources(self) -> list[tuple["DataConfig", float]]:
        """(one-source config, weight) for each source: the blend's entries, or this config with weight 1."""
        if isinstance(self.data, str) and not self.data.lstrip().startswith("["):
            return [(self, 1.0)]
        if isinstance(self.data, str):  # a blend given on the command line as JSON
            try:
                self.data = json.loads(self.data)
            except json.JSONDecodeError as e:
                raise DataError(f"data={self.data!r} starts with '[' but is not a JSON list of "
                                f"{{\"data\": ..., \"weight\": ...}} ({e.msg})") from None
            if not isinstance(self.data, list):
                raise DataError(f"data={self.data!r} must be a list of {{data, weight}} mappings")
        if not self.data:
            raise DataError("data=[] is an empty blend; give at least one {data: ..., weight: ...}")
        hints = typing.get_type_hints(DataConfig)
        allowed = {f.name for f in fields(DataConfig)} - {"max_epochs", "num_proc", "streaming"} | {"weight"}
        out = []
        for i, entry in enumerate(self.data):
            where = f"data[{i}]"
            if not isinstance(entry, dict) or "data" not in entry:
                raise DataError(f"{where}={entry!r} must be a mapping with a 'data' key and a 'weight'")
            unknown = sorted(set(entry) - allowed)
            if unknown:
                raise DataError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
            w = entry.get("weight")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 or w != w or w == float("inf"):
                raise DataError(f"{where}.weight={w!r} must be a number > 0 (weights are normalised to sum to 1)")
            if not isinstance(entry["data"], str):
                raise DataError(f"{where}.data={entry['data']!r} must be a string (blends do not nest)")
            kw = {k: check_value(f"{where}.{k}", v, hints[k]) for k, v in entry.items() if k != "weight"}
            out.append((replace(self, **kw), float(w)))
        total = sum(w for _, w in out)
        return [(c, w / total) for c, w in out]

    def describe(self) -> str:
        if isinstance(self.data, str):
            return self.data
        return " + ".join(f"{c.data} ({w:.0%})" for c, w in self.sources())


@functools.lru_cache(maxsize=1)
def python_docs_documents() -> tuple[tuple[str, str], ...]:
    """(key, text) of every pydoc topic and standard-library source file of this Python."""
    docs = [(f"pydoc:{k}", v) for k, v in sorted(topics.items()) if v.strip()]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip_dirs = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    for p in sorted(stdlib.rglob("*.py")):
        rel = p.relative_to(stdlib)
        if skip_dirs.intersection(rel.parts[:-1]) or p.stat().st_size > 200_000:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append((str(rel), text))
    return tuple(docs)


def read_text_file(f: Path, data: str) -> str:
    """A ``.txt`` document: UTF-8 text, or an error naming the file. Binary or mis-encoded files would otherwise
    be trained on as U+FFFD garbage; so would text that is mostly replacement or control characters."""
    raw = f.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"data={data!r}: {f} is not UTF-8 text (undecodable byte at offset {e.start}); convert it to "
                        f"UTF-8 or remove it") from None
    if text:
        junk = sum(1 for c in text if c == "\ufffd" or (ord(c) < 32 and c not in "\t\n\r\f\v"))
        if junk / len(text) > 0.1:
            raise DataError(f"data={data!r}: {f} is {100 * junk / len(text):.0f}% replacement or control characters, "
                            f"not text; remove it")
    return text


def read_rows_file(f: Path, field: str = "data", error=None) -> list[dict]:
    """The rows of one json (a list of objects, or one object), jsonl (an object per line) or parquet file; a file
    that is not valid is an ``error`` (a MinitronError class; default DataError) naming it and the line."""
    AlignmentError = error or DataError
    kind = f.suffix.lower()
    if kind == ".parquet":
        import datasets  # datasets and pyarrow only for the sources that need them: ~0.6 s at import

        try:
            return datasets.Dataset.from_parquet(str(f)).to_list()
        except Exception as e:  # pyarrow's errors have no common base
            raise AlignmentError(f"{field}={str(f)!r} is not a readable parquet file ({type(e).__name__}: {e})") from None
    try:
        text = f.read_text(encoding="utf-8-sig")  # a BOM (Windows editors write one) is not part of the JSON
    except UnicodeDecodeError:
        raise AlignmentError(f"{field}={str(f)!r} is not UTF-8 text") from None
    if kind == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise AlignmentError(f"{field}={str(f)!r}: line {i} is not valid JSON ({e.msg})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AlignmentError(f"{field}={str(f)!r} is not valid JSON ({e.msg} at line {e.lineno})") from None
        rows = data if isinstance(data, list) else [data]
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise AlignmentError(f"{field}={str(f)!r}: row {bad} is not a JSON object")
    return rows


def looks_like_path(data: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else that does not exist is a missing local path."""
    return (data.startswith((".", "/", "~", "\\")) or data.count("/") > 1 or "\\" in data
            or Path(data).suffix.lower() in LOCAL_EXTENSIONS)


def missing_path_error(data: str) -> DataError:
    return DataError(f"data={data!r}: no such file or directory (allowed: {DEFAULT_DATA!r}, a local "
                     f"{'/'.join(LOCAL_EXTENSIONS)} file or directory, a prepared folder, or a Hub dataset id "
                     f"'owner/name')")



def _jsonl_documents(f: Path, cfg: DataConfig) -> Iterator[tuple[str, str]]:
    with open(f, "rb") as fh:
        for i, line in enumerate(fh, 1):
            if i == 1:
                line = line.removeprefix(codecs.BOM_UTF8)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"data={cfg.describe()!r}: {f} line {i} is not valid JSON ({getattr(e, 'msg', e)})") from None
            yield f"{f}:{i}", row_text(row, cfg, f"{f} line {i}")


def row_text(row, cfg: DataConfig, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"data={cfg.describe()!r}: {where} is not a JSON object")
    if cfg.text_field not in row:
        raise DataError(f"text_field={cfg.text_field!r} is not a field of {where}; fields there: "
                        f"{', '.join(row) or 'none'}")
    text = row[cfg.text_field]
    if text is not None and not isinstance(text, str):
        strings = [k for k, v in row.items() if isinstance(v, str)]
        raise DataError(f"text_field={cfg.text_field!r} of {where} holds {type(text).__name__}, not text; string "
                        f"fields there: {', '.join(strings) or 'none'}")
    return text or ""


def parquet_file(f: Path, cfg: DataConfig):
    """``f`` opened as a ``pyarrow.parquet.ParquetFile`` (its footer read), with a string column ``text_field``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as e:  # pyarrow's errors have no common base
        raise DataError(f"data={cfg.describe()!r}: {f} could not be read as parquet ({type(e).__name__}: {e})") from None
    schema = pf.schema_arrow
    if cfg.text_field not in schema.names:
        raise DataError(f"text_field={cfg.text_field!r} is not a column of {f}; available columns: "
                        f"{', '.join(schema.names)}")
    if not (pa.types.is_string(schema.field(cfg.text_field).type)
            or pa.types.is_large_string(schema.field(cfg.text_field).type)):
        strings = [n.name for n in schema if pa.types.is_string(n.type) or pa.types.is_large_string(n.type)]
        raise DataError(f"text_field={cfg.text_field!r} of {f} holds {schema.field(cfg.text_field).type}, not text; "
                        f"string columns: {', '.join(strings) or 'none'}")
    return pf


def _parquet_documents(f: Path, cfg: DataConfig) -> Iterator[tuple[str, str]]:
    pf = parquet_file(f, cfg)
    i = 0
    batches = pf.iter_batches(batch_size=1024, columns=[cfg.text_field])
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # a damaged row group: pyarrow's errors have no common base
            raise DataError(f"data={cfg.describe()!r}: {f} could not be read after row {i} ({type(e).__name__}: "
                            f"{e}); the file is damaged") from None
        if batch is None:
            return
        for text in batch.column(0).to_pylist():
            yield f"{f}:{i}", text or ""
            i += 1


_WARNED: set = set()


def is_embedded(data) -> bool:
    """Whether ``data`` names the embedded default (``python-docs``). A local file or folder of that name wins over
    it, as a local model folder wins over a model alias: the path is what the user sees."""
    if data != DEFAULT_DATA:
        return False
    if Path(data).exists():
        if str(Path(data).resolve()) not in _WARNED:
            _WARNED.add(str(Path(data).resolve()))
            logger.warning("data=%r: reading the local path %s, not the embedded data of that name", data,
                           Path(data).resolve())
        return False
    return True


def is_prepared(data) -> bool:
    """Whether ``data`` names a folder written by ``minitron data prepare``."""
    return isinstance(data, str) and (Path(data).expanduser() / MANIFEST).is_file()


def is_hub(data) -> bool:
    """Whether ``data`` would be read from the Hub (not the embedded default, a local path or a blend)."""
    return (isinstance(data, str) and not is_embedded(data) and not Path(data).expanduser().exists()
            and not looks_like_path(data) and not data.lstrip().startswith("["))


def iter_documents(cfg: DataConfig) -> Iterator[tuple[str, str]]:
    """(key, text) of every non-empty document of one source, in load order, read incrementally. Bad input
    (a missing path, an unreadable file, a missing or non-text field) raises :class:`DataError` at the first
    document that shows it, before anything is yielded from it."""
    if not isinstance(cfg.data, str):
        raise DataError(f"data={cfg.data!r}: iter_documents reads one source; iterate over cfg.sources()")
    if is_embedded(cfg.data):
        yield from python_docs_documents()
        return
    path = Path(cfg.data).expanduser()
    if path.exists():
        if (path / MANIFEST).is_file():
            raise DataError(f"data={cfg.data!r} is a prepared token folder; it holds tokens, not documents")
        for f in local_files(path, cfg.data):
            kind = f.suffix.lower()
            if kind == ".txt":
                text = read_text_file(f, cfg.data)
                if text.strip():
                    yield str(f), text
                continue
            if kind == ".jsonl":
                rows = _jsonl_documents(f, cfg)
            elif kind == ".parquet":
                rows = _parquet_documents(f, cfg)
            else:
                rows = ((f"{f}:{i}", row_text(r, cfg, f"{f} row {i + 1}"))
                        for i, r in enumerate(read_rows_file(f, "data", DataError)))
            yield from ((k, t) for k, t in rows if t.strip())
        return
    if looks_like_path(cfg.data):
        raise missing_path_error(cfg.data)
    yield from ((k, t) for k, t in hub_documents(cfg) if t.strip())


def open_hub(cfg: DataConfig, streaming: bool = True):
    """The Hub dataset as a ``datasets`` (Iterable)Dataset, or a :class:`DataError` that says what to do offline."""
    import datasets

    try:
        return datasets.load_dataset(cfg.data, cfg.data_config, split=cfg.data_split, streaming=streaming)
    except Exception as e:
        raise DataError(
            f"data={cfg.data!r} (data_config={cfg.data_config!r}, data_split={cfg.data_split!r}) could not be "
            f"loaded from the Hub ({type(e).__name__}: {e}). Offline machines must pass a local path or "
            f"'{DEFAULT_DATA}' (and set HF_HUB_OFFLINE=1 to fail fast instead of retrying)"
        ) from e


def hub_documents(cfg: DataConfig, ds=None) -> Iterator[tuple[str, str]]:
    ds = open_hub(cfg) if ds is None else ds
    for i, row in enumerate(ds):
        yield f"{cfg.data}:{i}", row_text(row, cfg, f"{cfg.data!r} row {i}")


def digest(text: str) -> bytes:
    """sha256 of the text: the identity of a document for splitting and duplicate removal."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _unit(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_of(text_digest: bytes, cfg: DataConfig) -> str:
    """The split of a document with this :func:`digest`: a uniform number from (split_seed, hex digest) against
    the fractions. Unchanged since the first release, so a corpus lands in the same splits as before."""
    u = _unit(cfg.split_seed, text_digest.hex())
    v, c = cfg.validation_fraction, cfg.calibration_fraction
    return "validation" if u < v else "calibration" if u < v + c else "train"


def load_documents(cfg: DataConfig) -> list[tuple[str, str]]:
    """(key, text) pairs of one source in a list; empty and duplicate texts dropped; at most ``max_documents``.
    For small data only (evaluation prompts, tests): training reads prepared token shards instead."""
    seen: set[bytes] = set()  # exact duplicates (the stdlib has several) would leak across splits
    docs = []
    for k, t in iter_documents(cfg):
        d = digest(t)
        if d in seen:
            continue
        seen.add(d)
        docs.append((k, t))
        if cfg.max_documents is not None and len(docs) >= cfg.max_documents:
            break
    if not docs:
        raise DataError(f"data={cfg.describe()!r} holds no non-empty text")
    return docs


def split_documents(docs, cfg: DataConfig) -> dict[str, list[str]]:
    """{"train", "validation", "calibration"} -> texts of ``docs``, each deterministically shuffled."""
    out: dict[str, list[tuple[float, str]]] = {s: [] for s in SPLITS}
    for _, text in docs:
        d = digest(text)
        out[split_of(d, cfg)].append((_unit(cfg.split_seed + 1, d.hex()), text))
    return {s: [t for _, t in sorted(items, key=lambda x: x[0])] for s, items in out.items()}


def source_fingerprint(cfg: DataConfig) -> str:
    """What identifies the content of one source: the embedded default's Python and file list; local files' paths
    and content (:func:`minitron_hf.data.local.files_fingerprint`: the full content up to 256 MiB in all, beyond it
    size, modification time and sampled bytes); or the Hub id, config and split. A prepared cache keyed by it is
    rebuilt when a local file changes, even when the size and modification time stay the same."""
    h = hashlib.sha256()
    if is_embedded(cfg.data):
        h.update(sys.version.encode())
        for k, t in python_docs_documents():
            h.update(f"{k}\0{len(t)}\0".encode())
    else:
        path = Path(cfg.data).expanduser()
        if path.exists():
            h.update(files_fingerprint(local_files(path, cfg.data)).encode())
        else:
            h.update(f"hub\0{cfg.data}\0{cfg.data_config}\0{cfg.data_split}".encode())
    return h.hexdigest()


def prose_sentences(texts) -> list[str]:
    """The prose sentences of ``texts`` (12-40 words, ending with a period, mostly alphabetic, no markup),
    deduplicated and sorted: the material of the built-in continuation task and of the chat data's prompts."""
    out = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                words = s.split()
                if not 12 <= len(words) <= 40 or not s.endswith("."):
                    continue
                # prose, not code or tables: mostly alphabetic words, no markup
                if sum(w.strip(".,;:()'\"").isalpha() for w in words) < 0.8 * len(words) or any(
                        c in s for c in "*=<>{}[]|`\\_~"):
                    continue
                out.append(s)
    return sorted(set(out))
