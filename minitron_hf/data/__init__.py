"""Data: tokenize once into token shards, read blocks from memory maps, blend, resume exactly.

    source (python-docs | local files | Hub | a prepared folder)            sources.py
      local files: listing, checks before writing, content fingerprint     local.py
      -> prepare: split by content hash, dedup, tokenize, write shards    prepare.py   (`minitron data prepare`)
         chunks written atomically, resumed, undone after a failure      chunks.py
      -> Prepared / TokenStream: memory maps, checked on open             shards.py
      -> Blocks: sample i -> (source, epoch, block), shuffled by index    shards.py
      -> streaming: tokenize and pack on the fly from a Hub stream        streaming.py

Every stage that reads text calls :func:`open_sources` (through :func:`load_blocks` for the small validation and
calibration sets, :func:`train_blocks` for training). Data that is not a prepared folder is prepared on the fly
into the cache (``$MINITRON_CACHE/data/<key>``), once: the key covers the source's content fingerprint, the split
rule and the tokenizer, so a changed file or another tokenizer gets a new preparation and an unchanged one is
reused by every later command.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from ..outputs import build_once, cache_dir
from .prepare import prepare, prepare_key, tokenizer_info
from .shards import Blocks, Permutation, Prepared, ResumableSampler, Source, TokenStream, blend_pattern
from .sources import (DEFAULT_DATA, LOCAL_EXTENSIONS, MANIFEST, SPLITS, DataConfig, DataError,
                      digest, is_hub, is_prepared, iter_documents, load_documents, python_docs_documents, read_rows_file,
                      read_text_file, split_documents, split_of)
from .streaming import StreamingBlocks

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DATA", "LOCAL_EXTENSIONS", "MANIFEST", "SPLITS", "Blocks", "DataConfig", "DataError", "Permutation",
    "Prepared", "ResumableSampler", "Source", "TokenStream", "blend_pattern", "collate_blocks",
    "digest", "is_prepared", "iter_documents", "load_blocks", "load_documents", "open_sources",
    "prepare", "prepare_key", "python_docs_documents", "read_rows_file", "read_text_file", "split_documents",
    "split_of", "tokenizer_info", "train_blocks", "eval_config",
]

# shard_mb of the on-the-fly cache: small data (the embedded default) fits one chunk
CACHE_SHARD_MB = 256
STREAMING_EVAL_DOCUMENTS = 20_000


def cache_folder(cfg: DataConfig, info: dict) -> Path:
    return cache_dir() / "data" / prepare_key(cfg, info, CACHE_SHARD_MB)[:20]


def open_source(cfg: DataConfig, tokenizer, info: dict | None = None, field: str = "data") -> Prepared:
    """One source as prepared shards: a prepared folder as it is (its tokenizer checked against ``tokenizer``), or
    anything else prepared on the fly into the cache under a lock (ranks of one launch prepare it once)."""
    info = info or tokenizer_info(tokenizer)
    if is_prepared(cfg.data):
        return Prepared(cfg.data, info, field)
    if is_hub(cfg.data) and cfg.max_documents is None:
        raise DataError(f"{field}={cfg.data!r} is a Hub dataset: it is prepared once, ahead, not on the fly inside a "
                        f"stage (that would read all of it first). Run `minitron data prepare --data {cfg.data} "
                        f"--tokenizer MODEL --output DIR` and pass data=DIR; or set max_documents=N to prepare only its "
                        f"first N documents here (enough for calibration), or streaming=true to train from a stream")
    folder = cache_folder(cfg, info)

    def build():
        logger.info("preparing data=%r into the cache %s (once; `minitron data prepare` does this ahead of time for "
                    "large data)", cfg.data, folder)
        prepare(cfg, tokenizer, folder, shard_mb=CACHE_SHARD_MB, info=info)

    build_once(folder, lambda: (folder / MANIFEST).is_file(), build)
    return Prepared(folder, info, field)


def open_sources(cfg: DataConfig, tokenizer) -> list[tuple[Prepared, float]]:
    """Every source of ``cfg`` (one, or a blend's entries) opened and checked, with its normalised weight. All
    checks that need no model (fields, blend weights, manifests, shards, indexes, tokenizer) happen here."""
    info = tokenizer_info(tokenizer)
    entries = cfg.sources()
    return [(open_source(c, tokenizer, info, field="data" if len(entries) == 1 else f"data[{i}].data"), w)
            for i, (c, w) in enumerate(entries)]


def _blocks(cfg: DataConfig, tokenizer, split: str, seq_len: int, n: int | None, what: str, shuffle: bool = True,
            max_epochs: int = 1) -> Blocks:
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    sources = []
    for prepared, w in open_sources(cfg, tokenizer):
        stream = prepared[split]
        if stream.n_tokens == 0:
            hint = ("lower validation_fraction/calibration_fraction" if split == "train" else
                    f"raise {split}_fraction")
            raise DataError(f"the {split} split of data={prepared.name!r} is empty; {hint} or add documents")
        sources.append(Source(stream, w, prepared.name))
    seed = cfg.split_seed * 31 + SPLITS.index(split)
    return Blocks(sources, seq_len, n, seed=seed, shuffle=shuffle, max_epochs=max_epochs, what=what)


def load_blocks(cfg: DataConfig, tokenizer, split: str, seq_len: int, max_blocks: int | None = None) -> torch.LongTensor:
    """``max_blocks`` token blocks of one split as a [n, seq_len] tensor (validation, calibration: small sets; under
    ``streaming`` from the prepared :func:`eval_config` part). Asking for more blocks than the split holds is an
    error (these sets are never repeated)."""
    if max_blocks is not None and max_blocks < 1:
        raise DataError(f"max_blocks={max_blocks} must be >= 1 (or None for every full block)")
    try:
        return _blocks(eval_config(cfg), tokenizer, split, seq_len, max_blocks, f"{split} split", max_epochs=1).tensor()
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(("the ", f"{split}")) else f"{split} split: {msg}") from None


def train_blocks(cfg: DataConfig, tokenizer, seq_len: int, samples: int | None, rank: int = 0,
                 world_size: int = 1):
    """The train split: a map-style :class:`Blocks` dataset of ``samples`` blocks (None: one pass), read lazily,
    where more than ``max_epochs`` passes over any source is an error before training; or, with ``streaming``, this
    rank's :class:`~minitron_hf.data.streaming.StreamingBlocks` (``samples / world_size`` blocks of its own)."""
    if cfg.streaming:
        if samples is None:
            raise DataError("streaming=true needs max_steps (or train_samples): a stream's length is not known ahead, "
                            "and every rank must stop after the same number of blocks")
        return StreamingBlocks(replace(cfg, max_documents=None), tokenizer, seq_len, -(-samples // world_size),
                               rank=rank, world_size=world_size)
    return _blocks(cfg, tokenizer, "train", seq_len, samples, "train split", max_epochs=cfg.max_epochs)


def eval_config(cfg: DataConfig) -> DataConfig:
    """The data validation and calibration blocks come from: ``cfg`` itself, or under ``streaming`` the first
    ``max_documents`` (default 20,000) documents of the source, prepared (a stream is never read whole)."""
    if not cfg.streaming:
        return cfg
    return replace(cfg, streaming=False, max_documents=cfg.max_documents or STREAMING_EVAL_DOCUMENTS)


class BlockDataset(torch.utils.data.Dataset):
    """Blocks already in memory ([N, seq_len]) as a map-style dataset (small sets, tests)."""

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
