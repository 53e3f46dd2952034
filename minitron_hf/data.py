"""Data: documents from the embedded default, local files or the Hub -> splits -> packed token blocks.

- ``python-docs`` (the embedded default): ``pydoc_data.topics`` (documentation prose) and the standard
  library's own ``.py`` sources, read at run time from the running Python, never copied into the repo.
- a local file or directory: ``.json``/``.jsonl``/``.parquet`` (text in ``text_field``) or ``.txt``
  (one document per file);
- anything else: a Hub dataset id, read with ``datasets.load_dataset(data, data_config, split=...)``.

Exact duplicate documents are dropped. Documents are split deterministically by a stable hash (sha256)
of (split_seed, document text) into train / validation / calibration, so the three never overlap and
do not depend on load order or on where a file lives. Packing concatenates documents separated by EOS
and cuts fixed-length blocks: no padding anywhere; it stops tokenizing once enough blocks are full.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import MinitronError

logger = logging.getLogger(__name__)

DEFAULT_DATA = "python-docs"
SPLITS = ("train", "validation", "calibration")
LOCAL_EXTENSIONS = (".json", ".jsonl", ".parquet", ".txt")
_CHARS_PER_TOKEN = 4  # rough, for sizing tokenizer batches and deciding whether a job is big
_BATCH_MIN_CHARS, _BATCH_MAX_CHARS = 32_000, 2_000_000
_BAR_MIN_TOKENS = 1_000_000


class DataError(MinitronError):
    """Data that cannot be used; the message names the field, the value and what is allowed."""


@dataclass
class DataConfig:
    """Where the text comes from and how it is split."""

    data: str = field(default=DEFAULT_DATA, metadata={"help": "'python-docs' (embedded default), a local file or "
                      "directory (json, jsonl, parquet, txt) or a Hub dataset id"})
    data_config: str | None = field(default=None, metadata={"help": "Hub dataset config name"})
    data_split: str = field(default="train", metadata={"help": "split of the Hub dataset to read (local files are "
                            "read whole; train/validation/calibration are cut from the documents afterwards)"})
    text_field: str = field(default="text", metadata={"help": "column holding the text (json/jsonl/parquet/Hub)"})
    max_documents: int | None = field(default=None, metadata={"help": "keep at most this many documents (the first "
                                      "ones in load order, after empty and duplicate texts are dropped)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the deterministic split and shuffle"})
    validation_fraction: float = field(default=0.05, metadata={"help": "share of documents held out for validation"})
    calibration_fraction: float = field(default=0.05, metadata={"help": "share of documents for importance "
                                        "calibration (disjoint from train and validation)"})


@functools.lru_cache(maxsize=1)
def python_docs_documents() -> tuple[tuple[str, str], ...]:
    """(key, text) of every pydoc topic and standard-library source file of this Python."""
    from pydoc_data.topics import topics

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


def _local_files(path: Path) -> list[Path]:
    """The file itself, or every supported file under the directory (hidden ones skipped), sorted."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    bad = [p for p in files if p.suffix not in LOCAL_EXTENSIONS]
    if bad:
        raise DataError(f"data={str(path)!r}: unsupported file type {bad[0].suffix!r}; allowed: {', '.join(LOCAL_EXTENSIONS)}")
    if not files:
        raise DataError(f"data={str(path)!r}: no {', '.join(LOCAL_EXTENSIONS)} files in this directory")
    return files


def read_text_file(f: Path, data: str) -> str:
    """A ``.txt`` document: UTF-8 text, or an error naming the file. Binary or mis-encoded files would otherwise
    be trained on as U+FFFD garbage; so would text that is mostly replacement or control characters."""
    raw = f.read_bytes()
    try:
        text = raw.decode("utf-8")
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
    if f.suffix == ".parquet":
        import datasets

        try:
            return datasets.Dataset.from_parquet(str(f)).to_list()
        except Exception as e:  # pyarrow's errors have no common base
            raise AlignmentError(f"{field}={str(f)!r} is not a readable parquet file ({type(e).__name__}: {e})") from None
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AlignmentError(f"{field}={str(f)!r} is not UTF-8 text") from None
    if f.suffix == ".jsonl":
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


def _rows_text(ds, cfg: DataConfig, origin: str) -> list[str]:
    if cfg.text_field not in ds.column_names:
        raise DataError(f"text_field={cfg.text_field!r} is not a column of {origin}; available columns: "
                        f"{', '.join(ds.column_names)}")
    feature = ds.features[cfg.text_field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        strings = [n for n, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        raise DataError(f"text_field={cfg.text_field!r} of {origin} holds {feature}, not text; string columns: "
                        f"{', '.join(strings) or 'none'}")
    return ds[cfg.text_field]


def _looks_like_path(data: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else that does not exist is a missing local path."""
    return (data.startswith((".", "/", "~", "\\")) or data.count("/") > 1 or "\\" in data
            or Path(data).suffix in LOCAL_EXTENSIONS)


def load_documents(cfg: DataConfig) -> list[tuple[str, str]]:
    """(key, text) pairs; empty and duplicate texts dropped; at most ``max_documents``."""
    if cfg.max_documents is not None and cfg.max_documents < 1:
        raise DataError(f"max_documents={cfg.max_documents} must be >= 1 (or unset for all documents)")
    if cfg.data == DEFAULT_DATA:
        docs = list(python_docs_documents())
    else:
        path = Path(cfg.data).expanduser()
        docs = []
        if path.exists():
            for f in _local_files(path):
                if f.suffix == ".txt":
                    docs.append((str(f), read_text_file(f, cfg.data)))
                    continue
                import datasets

                try:
                    ds = datasets.load_dataset("parquet" if f.suffix == ".parquet" else "json", data_files=str(f),
                                               split="train")
                except Exception as e:
                    raise DataError(f"data={cfg.data!r}: {f} could not be read as {f.suffix[1:]} "
                                    f"({type(e).__name__}: {e})") from e
                docs.extend((f"{f}:{i}", t) for i, t in enumerate(_rows_text(ds, cfg, str(f))))
        elif _looks_like_path(cfg.data):
            raise DataError(f"data={cfg.data!r}: no such file or directory (allowed: {DEFAULT_DATA!r}, a local "
                            f"{'/'.join(LOCAL_EXTENSIONS)} file or directory, or a Hub dataset id 'owner/name')")
        else:
            import datasets

            try:
                ds = datasets.load_dataset(cfg.data, cfg.data_config, split=cfg.data_split)
            except Exception as e:
                raise DataError(
                    f"data={cfg.data!r} (data_config={cfg.data_config!r}, data_split={cfg.data_split!r}) could not be "
                    f"loaded from the Hub ({type(e).__name__}: {e}). Offline machines must pass a local path or "
                    f"'{DEFAULT_DATA}' (and set HF_HUB_OFFLINE=1 to fail fast instead of retrying)"
                ) from e
            docs = [(f"{cfg.data}:{i}", t) for i, t in enumerate(_rows_text(ds, cfg, repr(cfg.data)))]
    seen: set[str] = set()  # exact duplicates (the stdlib has several) would leak across splits
    docs = [(k, t) for k, t in docs if isinstance(t, str) and t.strip() and not (t in seen or seen.add(t))]
    if cfg.max_documents is not None:
        docs = docs[: cfg.max_documents]
    if not docs:
        raise DataError(f"data={cfg.data!r} holds no non-empty text")
    return docs


def _check_fractions(cfg: DataConfig) -> None:
    for name in ("validation_fraction", "calibration_fraction"):
        v = getattr(cfg, name)
        if not 0 <= v < 1:
            raise DataError(f"{name}={v} must be in [0, 1)")
    if cfg.validation_fraction + cfg.calibration_fraction >= 1:
        raise DataError(f"validation_fraction + calibration_fraction = "
                        f"{cfg.validation_fraction + cfg.calibration_fraction} must be < 1 (train needs documents)")


def _unit(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_documents(docs, cfg: DataConfig) -> dict[str, list[str]]:
    """{"train", "validation", "calibration"} -> texts, each deterministically shuffled."""
    _check_fractions(cfg)
    v, c = cfg.validation_fraction, cfg.calibration_fraction
    out: dict[str, list[tuple[float, str]]] = {s: [] for s in SPLITS}
    for _, text in docs:
        digest = hashlib.sha256(text.encode()).hexdigest()
        u = _unit(cfg.split_seed, digest)
        split = "validation" if u < v else "calibration" if u < v + c else "train"
        out[split].append((_unit(cfg.split_seed + 1, digest), text))
    return {s: [t for _, t in sorted(items, key=lambda x: x[0])] for s, items in out.items()}


def pack_documents(texts, tokenizer, seq_len: int, max_blocks: int | None = None) -> torch.LongTensor:
    """Documents -> [n_blocks, seq_len]: tokens of each document then EOS, concatenated, cut into blocks.

    Stops tokenizing once ``max_blocks`` blocks are full; the remainder is dropped (no padding).
    """
    if seq_len < 2:
        raise DataError(f"seq_len={seq_len} must be >= 2")
    if max_blocks is not None and max_blocks < 1:
        raise DataError(f"max_blocks={max_blocks} must be >= 1 (or None for every full block)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token; documents cannot be separated when packing")
    need = None if max_blocks is None else max_blocks * seq_len
    buf: list[int] = []
    # Progress in tokens when the target is known, else in documents; only for jobs that take a while.
    if need is not None:
        bar = tqdm(total=need, desc="tokenize", unit="tok", disable=need < _BAR_MIN_TOKENS, leave=False)
    else:
        bar = tqdm(total=len(texts), desc="tokenize", unit="doc", leave=False,
                   disable=sum(map(len, texts)) < _BAR_MIN_TOKENS * _CHARS_PER_TOKEN)
    i = 0
    while i < len(texts) and (need is None or len(buf) < need):
        # Batches of documents for the fast tokenizer's parallelism, sized in characters so that a small
        # request (a few calibration blocks) tokenizes little more than it needs.
        budget = _BATCH_MAX_CHARS if need is None else min(
            _BATCH_MAX_CHARS, max(_BATCH_MIN_CHARS, 2 * _CHARS_PER_TOKEN * (need - len(buf))))
        j, chars = i, 0
        while j < len(texts) and (j == i or chars < budget):
            chars += len(texts[j])
            j += 1
        for ids in tokenizer(list(texts[i:j]), add_special_tokens=False, verbose=False)["input_ids"]:
            buf.extend(ids)
            buf.append(eos)
        bar.update(min(len(buf), need) - bar.n if need is not None else j - i)
        i = j
    bar.close()
    n = len(buf) // seq_len
    if max_blocks is not None:
        if n < max_blocks:
            raise DataError(
                f"only {n} blocks of seq_len={seq_len} tokens are available ({len(buf):,} tokens), {max_blocks} were "
                f"requested; ask for fewer samples (calib_samples/val_samples), a shorter seq_len, or more data"
            )
        n = max_blocks
    if n == 0:
        raise DataError(f"the data yields no full block of seq_len={seq_len} tokens ({len(buf)} tokens in all)")
    logger.info("packed %d blocks x %d tokens from %d tokens of %d/%d documents", n, seq_len, len(buf), i, len(texts))
    return torch.tensor(buf[: n * seq_len], dtype=torch.long).view(n, seq_len)


def load_blocks(cfg: DataConfig, tokenizer, split: str, seq_len: int, max_blocks: int | None = None) -> torch.LongTensor:
    """Token blocks of one split: load -> split -> pack."""
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    texts = split_documents(load_documents(cfg), cfg)[split]
    if not texts:
        hint = "lower validation_fraction/calibration_fraction" if split == "train" else f"raise {split}_fraction"
        raise DataError(f"the {split} split of data={cfg.data!r} is empty; {hint} or add documents")
    try:
        return pack_documents(texts, tokenizer, seq_len, max_blocks)
    except DataError as e:
        raise DataError(f"{split} split: {e}") from None


class BlockDataset(torch.utils.data.Dataset):
    """Packed [N, seq_len] token blocks as a map-style dataset for ``transformers.Trainer``."""

    def __init__(self, blocks: torch.LongTensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i) -> dict:
        return {"input_ids": self.blocks[i]}


def collate_blocks(features: list[dict]) -> dict:
    """Stack blocks; ``labels`` are the inputs (the models' own convention, shifted inside their loss)
    and ``shift_labels`` the same targets already aligned with positions (-100 at the last one), which
    the KD loss uses and the Trainer counts for ``num_items_in_batch``."""
    ids = torch.stack([f["input_ids"] for f in features])
    shift = torch.full_like(ids, -100)
    shift[:, :-1] = ids[:, 1:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(), "shift_labels": shift}
