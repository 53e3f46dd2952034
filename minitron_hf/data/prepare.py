"""Tokenize once: one source -> token shards + index + manifest on disk (``minitron data prepare``).

Layout of a prepared folder::

    manifest.json                  written last: its presence means the folder is complete
    train-00000.bin                the tokens of chunk 0's train documents, raw uint16 (uint32 if the vocabulary
    train-00000.idx.npy            needs it); the .idx.npy holds each document's start offset in that .bin
    validation-00000.bin ...       the same for the other splits
    chunk-00000.json               a finished chunk: how far into the source it reaches, its token counts
    chunk-00000.digests.npy        8-byte digests of its documents (to rebuild duplicate removal on resume)

The source is read once, a document at a time (:func:`~minitron_hf.data.sources.iter_documents`); each
document's split follows from its content hash; exact duplicates are dropped with a compact set of 8-byte
digests (16-32 bytes per document). Documents are tokenized in batches by the fast tokenizer, in ``num_proc``
worker processes when asked, and written in source order, so the output does not depend on ``num_proc``.

Each document is written as ``[BOS] + tokens + [EOS]``: the BOS only where the tokenizer itself adds one
(``add_special_tokens=True`` starts with ``bos_token_id``: Llama-3, Gemma), the EOS always, so documents stay
separated when they are packed. Blocks of ``seq_len`` are cut when the shards are read, not here: one
preparation serves every sequence length (and for such a tokenizer every block also starts with BOS: see
:mod:`minitron_hf.data.shards`).

Chunks (``shard_mb`` MB of source text each) are the unit of atomic writes and of resume: a chunk's files
are written under temporary names and renamed, then ``chunk-N.json`` is written. An interrupted prepare
restarts at the first unfinished chunk (the source is read again up to there, but not tokenized).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from ..config import at_least
from ..loading import load_tokenizer
from ..outputs import (CorruptFileError, OutputError, check_output, disk_full_message, input_paths, read_json,
                       write_json_atomically, write_text_atomically)
from .chunks import PROGRESS, DigestSet, Chunk, finished_chunks, remove_ours, discard
from .checks import check_source
from .sources import MANIFEST, SPLITS, DataConfig, DataError, digest, is_prepared, iter_documents, \
    source_fingerprint, split_of

logger = logging.getLogger(__name__)

FORMAT = "minitron-hf token shards"
VERSION = 1
_BATCH_CHARS = 1_000_000  # characters per tokenizer call (and per task sent to a worker)


# --------------------------------------------------------------------------------------------- tokenizer


def tokenizer_info(tok) -> dict:
    """What a prepared folder must agree on with the model that reads it: a fingerprint of the tokenizer's full
    definition (vocabulary, merges, normalizer, pre-tokenizer), its size, and the packing convention."""
    backend = getattr(tok, "backend_tokenizer", None)
    h = hashlib.sha256()
    if backend is not None:
        # the definition without the padding/truncation settings, which every call of the tokenizer may change
        # (the first call sets them: a fingerprint taken before it would not match one taken after)
        definition = json.loads(backend.to_str())
        for transient in ("padding", "truncation"):
            definition.pop(transient, None)
        h.update(json.dumps(definition, sort_keys=True).encode())
    else:  # a slow tokenizer: its vocabulary is its definition
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    size = len(tok)
    bos_per_document = False
    if tok.bos_token_id is not None:
        ids = tok("a", add_special_tokens=True)["input_ids"]
        bos_per_document = bool(ids) and ids[0] == tok.bos_token_id
    if tok.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token; documents cannot be separated when packing")
    h.update(f"\0{size}\0{tok.bos_token_id}\0{tok.eos_token_id}\0{bos_per_document}".encode())
    return {"name": str(getattr(tok, "name_or_path", "")), "fingerprint": h.hexdigest(), "vocab_size": size,
            "bos_token_id": tok.bos_token_id if bos_per_document else None, "eos_token_id": tok.eos_token_id,
            "bos_per_document": bos_per_document, "dtype": "uint16" if size <= 2**16 else "uint32"}


def encode(tok, texts: list[str], info: dict) -> tuple[np.ndarray, np.ndarray]:
    """Documents -> (their tokens concatenated, each one's length), with the BOS/EOS convention of ``info``."""
    ids = tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
    pre = [info["bos_token_id"]] if info["bos_per_document"] else []
    lengths = np.fromiter((len(x) + len(pre) + 1 for x in ids), dtype=np.int64, count=len(ids))
    flat = np.empty(int(lengths.sum()), dtype=info["dtype"])
    pos = 0
    for x in ids:
        if pre:
            flat[pos] = pre[0]
            pos += 1
        flat[pos:pos + len(x)] = x
        pos += len(x)
        flat[pos] = info["eos_token_id"]
        pos += 1
    return flat, lengths


_worker: dict = {}


def _worker_init(tok, info: dict) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the processes are the parallelism
    # Ctrl-C reaches the whole process group: the parent stops the pool and reports it; a worker's traceback would
    # only print under the CLI's one-line message
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker["tok"], _worker["info"] = (pickle.loads(tok) if isinstance(tok, bytes) else tok), info


def _worker_encode(texts: list[str]):
    return encode(_worker["tok"], texts, _worker["info"])


# --------------------------------------------------------------------------------------------- writing


def prepare_key(cfg: DataConfig, info: dict, shard_mb: int, fingerprint: str | None = None) -> str:
    """Identity of a preparation: same source content, split rule, tokenizer and chunking -> same folder.
    ``fingerprint``: the caller's :func:`~minitron_hf.data.sources.source_fingerprint` of ``cfg``, not computed
    twice."""
    parts = {"source": fingerprint or source_fingerprint(cfg), "data": cfg.data, "data_config": cfg.data_config,
             "data_split": cfg.data_split, "text_field": cfg.text_field, "max_documents": cfg.max_documents,
             "split": [cfg.split_seed, cfg.validation_fraction, cfg.calibration_fraction],
             "tokenizer": info["fingerprint"], "shard_mb": shard_mb, "version": VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def prepare(cfg: DataConfig, tokenizer, output, shard_mb: int = 256, num_proc: int | None = None,
            overwrite: bool = False, progress: bool = True, info: dict | None = None, check: bool = True) -> dict:
    """Prepare one source into ``output``; returns its manifest. A complete folder with the same key is reused
    as is; one with a different key is refused unless ``overwrite``; an interrupted one with the same key is
    resumed at its first unfinished chunk.

    The source is checked (:func:`~minitron_hf.data.checks.check_source`; ``check=False``: the caller did) before
    anything is written. A first preparation that fails (bad input found while reading, a full disk: any error but
    an interruption) leaves nothing behind, so the rerun on the fixed input starts clean; an interrupted one keeps
    its finished chunks for the rerun to resume. A full disk is an :class:`~minitron_hf.outputs.OutputError`."""
    if not isinstance(cfg.data, str):
        raise DataError("prepare takes one source at a time; prepare each entry of a blend (data: [...]) into its "
                        "own folder and list those folders in the blend")
    if shard_mb < 1:
        raise DataError(f"shard_mb={shard_mb} must be >= 1")
    num_proc = cfg.num_proc if num_proc is None else num_proc
    if num_proc < 1:
        raise DataError(f"num_proc={num_proc} must be >= 1")
    if check:
        check_source(cfg)
    out = Path(output).expanduser()
    info = info or tokenizer_info(tokenizer)  # ``info``: the caller's tokenizer_info(tokenizer), not computed twice
    fingerprint = source_fingerprint(cfg)
    key = prepare_key(cfg, info, shard_mb, fingerprint)
    check_output(out, "output", sources=input_paths(cfg), overwrite=True)
    progress_file = out / PROGRESS
    if (out / MANIFEST).is_file():
        old = _json_or_none(out / MANIFEST)
        if old is not None and old.get("key") == key:
            logger.info("data already prepared in %s (same source, tokenizer and split): reusing it", out)
            return old
        if not overwrite:
            what = "prepared data of another source or tokenizer (source {!r}, tokenizer {!r})".format(
                _get(old, "source", "data"), _get(old, "tokenizer", "name")) if old is not None else \
                f"a {MANIFEST} that is not a JSON object"
            raise DataError(f"output={str(out)!r} already holds {what}; pass --overwrite to replace it or choose "
                            f"another folder")
        remove_ours(out)
    elif progress_file.is_file():
        if _get(_json_or_none(progress_file), "key") != key:
            if not overwrite:
                raise DataError(f"output={str(out)!r} holds an unfinished preparation of other data (an interrupted "
                                f"run of another source, tokenizer or split); pass --overwrite to replace it or "
                                f"choose another folder")
            remove_ours(out)
    elif out.exists() and any(out.iterdir()):
        raise DataError(f"output={str(out)!r} exists and is not a prepared-data folder (no {MANIFEST}); choose a "
                        f"new folder (--overwrite never deletes files it did not write)")
    created = not out.exists()
    done: list[dict] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not progress_file.is_file():
            write_json_atomically(progress_file, {"key": key, "tokenizer": info, "started": time.time()})
        done = finished_chunks(out, info["dtype"])
        t0 = time.time()
        seen = DigestSet()
        for rec in done:
            for k in np.load(out / f"chunk-{rec['index']:05d}.digests.npy").tolist():
                seen.add(k)
        skip = done[-1]["source_documents_end"] if done else 0
        if done:
            logger.info("resuming the preparation in %s at chunk %d (%d source documents already done)", out,
                        len(done), skip)
        stats, written = _write_chunks(cfg, tokenizer, info, out, shard_mb, num_proc, seen, skip, len(done), progress)
        return _write_manifest(cfg, info, out, key, fingerprint, done + written, stats, time.time() - t0, num_proc,
                               shard_mb)
    except Exception as e:  # not KeyboardInterrupt: an interrupted preparation is resumed by the rerun
        if not done:
            discard(out, created)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OutputError(disk_full_message(e, f"the prepared data in {out}") + (
                "" if not done else f" (its {len(done)} finished chunks are kept: the rerun resumes there)")) from e
        raise


def _json_or_none(path: Path) -> dict | None:
    """A JSON object file of ours, or None when it is unreadable or not an object."""
    try:
        obj = read_json(path)
    except (CorruptFileError, OutputError):
        return None
    return obj if isinstance(obj, dict) else None


def _get(obj, *keys):
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None
    return obj


def _write_chunks(cfg, tokenizer, info, out, shard_mb, num_proc, seen, skip, first_chunk, progress) -> dict:
    """Read the source after its first ``skip`` documents, tokenize, write chunks from ``first_chunk`` on; returns
    (counts, the records of the chunks written)."""
    chunk_chars = shard_mb * 1_000_000
    stats = {"read": skip, "duplicates": 0, "kept": len(seen)}
    written: list[dict] = []
    pool = None
    if num_proc > 1:
        # fork where there is one: workers start at once with the tokenizer already loaded (spawn re-imports
        # transformers in each, ~10 s). Nothing has run the tokenizer's thread pool yet (tokenizer_info encodes one
        # string), which is what makes forking a fast tokenizer safe.
        if "fork" in multiprocessing.get_all_start_methods():
            pool = multiprocessing.get_context("fork").Pool(num_proc, _worker_init, (tokenizer, info))
        else:
            pool = multiprocessing.get_context("spawn").Pool(num_proc, _worker_init, (pickle.dumps(tokenizer), info))
    pending: deque = deque()  # (async result or encoded tuple, labels, chunk)
    chunk = Chunk(out, first_chunk, info["dtype"])
    bar = tqdm(desc="prepare", unit="tok", unit_scale=True, disable=not progress, leave=False)

    def drain(limit: int) -> None:
        while len(pending) > limit:
            res, labels, ch = pending.popleft()
            flat, lengths = res.get() if pool is not None else res
            ends = np.cumsum(lengths)
            for s in SPLITS:
                sel = np.flatnonzero(labels == SPLITS.index(s))
                if len(sel):
                    parts = [flat[ends[i] - lengths[i]:ends[i]] for i in sel]
                    ch.add(s, np.concatenate(parts), lengths[sel])
            bar.update(int(lengths.sum()))

    texts, labels = [], []
    batch_chars = 0

    def submit() -> None:
        nonlocal texts, labels, batch_chars
        if not texts:
            return
        lab = np.array(labels, dtype=np.int8)
        res = pool.apply_async(_worker_encode, (texts,)) if pool is not None else encode(tokenizer, texts, info)
        pending.append((res, lab, chunk))
        drain(2 * num_proc if pool is not None else 0)
        texts, labels, batch_chars = [], [], 0

    try:
        for n, (_, text) in enumerate(iter_documents(cfg), 1):
            if n <= skip:
                continue
            stats["read"] = n
            full = digest(text)
            d = DigestSet.key(full)
            if not seen.add(d):
                stats["duplicates"] += 1
                continue
            stats["kept"] += 1
            chunk.digests.append(d)
            texts.append(text)
            labels.append(SPLITS.index(split_of(full, cfg)))
            batch_chars += len(text)
            chunk.chars += len(text)
            if batch_chars >= _BATCH_CHARS:
                submit()
            if chunk.chars >= chunk_chars:
                submit()
                drain(0)
                written.append(chunk.commit(n))
                chunk = Chunk(out, chunk.index + 1, info["dtype"])
            if cfg.max_documents is not None and stats["kept"] >= cfg.max_documents:
                break
        submit()
        drain(0)
        if chunk.digests:
            written.append(chunk.commit(stats["read"]))
        else:
            chunk.abort()
    except BaseException:
        chunk.abort()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return stats, written


def _write_manifest(cfg, info, out, key, fingerprint, chunks, stats, seconds, num_proc, shard_mb) -> dict:
    splits = {}
    for s in SPLITS:
        shards = [rec["shards"][s] for rec in chunks if s in rec["shards"]]
        splits[s] = {"documents": sum(x["documents"] for x in shards), "tokens": sum(x["tokens"] for x in shards),
                     "shards": shards}
    if not any(splits[s]["documents"] for s in SPLITS):
        raise DataError(f"data={cfg.data!r} holds no non-empty text")
    src = {k: v for k, v in asdict(cfg).items() if k in ("data", "data_config", "data_split", "text_field",
                                                          "max_documents")}
    src["fingerprint"] = fingerprint
    manifest = {
        "format": FORMAT, "version": VERSION, "key": key, "source": src,
        "split": {"seed": cfg.split_seed, "validation_fraction": cfg.validation_fraction,
                  "calibration_fraction": cfg.calibration_fraction,
                  "rule": "u = first 8 bytes of sha256(f'{seed}\\0{sha256(text).hexdigest()}') / 2**64; "
                          "validation if u < validation_fraction, calibration if u < validation_fraction + "
                          "calibration_fraction, else train"},
        "tokenizer": info, "dtype": info["dtype"], "shard_mb": shard_mb, "num_proc": num_proc,
        "documents": {"read": stats["read"], "duplicates_dropped": stats["duplicates"],
                      "kept": sum(splits[s]["documents"] for s in SPLITS)},
        "splits": splits, "chunks": len(chunks), "seconds": round(seconds, 1),
    }
    write_json_atomically(out / MANIFEST, manifest)
    (out / PROGRESS).unlink(missing_ok=True)
    logger.info("prepared %s into %s: %s tokens in %d chunks (%s) in %.0f s", cfg.data, out,
                f"{sum(splits[s]['tokens'] for s in SPLITS):,}", len(chunks),
                ", ".join(f"{s} {splits[s]['documents']:,} docs" for s in SPLITS), seconds)
    return manifest


# --------------------------------------------------------------------------------------------- command


@dataclass
class PrepareConfig:
    """Options of ``minitron data prepare`` (the source's options come from DataConfig)."""

    output: str | None = field(default=None, metadata={"help": "folder to write the token shards into (a blend: one "
                               "sub-folder per source, plus blend.yaml)"})
    tokenizer: str = field(default="smollm2-135m", metadata={"help": "model (folder, Hub id or 'smollm2-135m') whose "
                           "tokenizer to use: the model that will read the data"})
    shard_mb: int = field(default=256, metadata={"help": "MB of source text per chunk (the unit of atomic writes and "
                          "of resume)"})
    overwrite: bool = field(default=False, metadata={"help": "replace prepared data of another source or tokenizer "
                            "in output (files it did not write are never deleted)"})

    def __post_init__(self):
        at_least(self, ("shard_mb",), error=DataError)


def run_prepare(data_cfg: DataConfig, cfg: PrepareConfig) -> dict:
    """Prepare every source of ``data_cfg`` under ``cfg.output``: {"sources": [{data, weight, folder, manifest}],
    "config": the ``data:`` value that reads them}. Every source is checked before the tokenizer loads or anything
    is written; a blend whose preparation fails (not an interruption) removes the source folders it created."""
    if not cfg.output:
        raise DataError("output is required: the folder to write the token shards into (--output DIR)")
    entries = data_cfg.sources()  # blend weights and keys checked here, before the tokenizer loads
    for c, _ in entries:
        if is_prepared(c.data):
            raise DataError(f"data={c.data!r} is already prepared; point the stages at it directly")
    for c, _ in entries:  # every source before the first is written: a blend's missing second source included
        check_source(c)
    # the output is never, around or inside any input: each source of a blend, the tokenizer
    out = check_output(cfg.output, "output", sources=input_paths(data_cfg, cfg), overwrite=True, error=DataError)
    tok = load_tokenizer(cfg.tokenizer)
    blend = not isinstance(data_cfg.data, str)
    created = [] if out.exists() else [out]  # what this run creates, removed again if it fails
    results = []
    try:
        for i, (c, w) in enumerate(entries):
            folder = out / f"source-{i}" if blend else out
            if not folder.exists():
                created.append(folder)
            manifest = prepare(c, tok, folder, shard_mb=cfg.shard_mb, num_proc=data_cfg.num_proc,
                               overwrite=cfg.overwrite, check=False)
            results.append({"data": c.data, "weight": w, "folder": str(folder), "manifest": manifest})
        config = [{"data": r["folder"], "weight": r["weight"]} for r in results] if blend else str(out)
        if blend:
            write_text_atomically(out / "blend.yaml", "# the prepared blend: use as the `data:` of a run or stage "
                                  "config\n" + yaml.safe_dump({"data": config}, sort_keys=False))
    except Exception:  # not KeyboardInterrupt: an interrupted blend resumes where it stopped
        for folder in reversed(created):
            discard(folder, True)
        raise
    return {"sources": results, "config": config}
