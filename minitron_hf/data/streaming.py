"""Streaming: tokenize and pack the train split on the fly, for data that does not fit on local disk.

Use it (``streaming: true``) when the corpus is too large to prepare into token shards on this machine (a
multi-terabyte Hub dataset, a bucket of parquet files). Anything that fits is better prepared once
(``minitron data prepare``): shards are read by index, shuffled, blended, and checked against the run's length
before training starts, none of which a stream can do.

What is read
    :class:`StreamingBlocks` reads one source as a ``datasets.IterableDataset``: a Hub dataset
    (:func:`~minitron_hf.data.sources.open_hub`), local ``.jsonl``/``.json``/``.parquet`` files (the ``json`` /
    ``parquet`` builders with ``streaming=True``, one shard per file), or a ``dataset`` built by the caller. Of each
    row it keeps the text of ``text_field`` if it is not blank and its content hash puts it in the train split
    (:func:`~minitron_hf.data.sources.split_of`: the rule of prepared data, so the same document lands in the same
    split either way). Documents are tokenized in batches (64 documents or 1M characters) with the ``[BOS] + tokens
    + [EOS]`` convention of :func:`~minitron_hf.data.prepare.encode`, concatenated, and cut into consecutive blocks
    of ``seq_len`` tokens; the remainder carries over to the next documents: exactly the packing of the train
    documents concatenated in stream order. Memory is bounded by one batch of documents plus the token buffer,
    never by the corpus. There is no shuffling beyond the source's own order.

No duplicate removal
    Prepared data drops exact duplicates with a table of digests of every document seen. A stream does not: that
    table would grow with the corpus and would have to travel with every checkpoint. **A streamed corpus is assumed
    to be deduplicated upstream** (the large pretraining corpora on the Hub are); duplicates in it are trained on
    as often as they occur.

Validation and calibration
    Only the train split streams. Validation and calibration blocks still come from a prepared, small set
    (:func:`~minitron_hf.data.load_blocks`): prepare a bounded part of the source (``max_documents``) or point
    them at a prepared folder. The split rule is the same hash, so documents of those splits are never streamed
    as training data.

Ranks
    Each process builds its own :class:`StreamingBlocks` with its ``rank`` and ``world_size``; the stream is split
    with ``datasets.distributed.split_dataset_by_node``. When the number of shards (files) is a multiple of the
    world size, each rank reads its own shards; otherwise every rank reads every example and keeps one in
    ``world_size`` (a warning says so: reading, not tokenizing, is then repeated on every rank). Ranks get
    different amounts of data: give ``n_samples`` (the blocks one rank trains on) so that every rank yields the
    same number of blocks, or distributed training would wait forever for the rank that ran out first. The blocks
    must reach the training loop as this rank produced them: read with ``num_workers=0`` (the resume state lives in
    the process that iterates; a DataLoader worker is refused), and without accelerate dispatching rank 0's
    batches or re-sharding the batches across processes (each rank's stream is already its own).

Passes
    Without ``n_samples`` the dataset is one pass over the stream. With it, a stream that runs out starts over
    (the carried tokens continue into the new pass), at most ``max_epochs`` passes in all; needing more is an error
    when it happens (a stream's length is not known ahead of time).

Resume
    ``state_dict(consumed=N)`` returns, as JSON-serialisable data, the position after the first ``N`` blocks this
    rank yielded: the ``datasets`` state at a document boundary (the end of the document holding block ``N``'s last
    token), the tokens of that document (and of the carried buffer) not yet in a block, the pass, and ``N``. A new
    :class:`StreamingBlocks` with the same arguments, after ``load_state_dict(state)``, continues with block
    ``N + 1`` exactly, without tokenizing anything before it (``datasets`` skips to the saved row of the current
    shard; what that costs is up to its reader). A DataLoader, and accelerate, fetch batches ahead of the training
    step, so when a checkpoint is written the dataset has usually yielded more blocks than were trained on: the
    state after each of the last ``history`` blocks is kept, and asking for one outside that window is a
    ``ValueError``. The Trainer mixin (:mod:`minitron_hf.training`) writes ``data_state_rank<R>.json`` into each
    checkpoint with ``consumed = global_step x per_device_batch x grad_accum`` and loads it back on resume. A state
    names the stream it belongs to (source, split rule, tokenizer, ``seq_len``, rank, world size); loading it into
    another is a :class:`~minitron_hf.data.sources.DataError`.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .prepare import encode, tokenizer_info
from .sources import (DEFAULT_DATA, DataConfig, DataError, is_embedded, local_files, looks_like_path, row_text,
                      digest, is_prepared, open_hub, split_of)

logger = logging.getLogger(__name__)

__all__ = ["StreamingBlocks"]

STATE_FORMAT = "minitron-hf stream state"
STATE_VERSION = 1
BATCH_DOCUMENTS = 64  # documents per tokenizer call
BATCH_CHARS = 1_000_000  # or fewer, when they are long
HISTORY = 1024  # blocks whose state is kept for state_dict(consumed=...)


@dataclass
class _Snapshot:
    """The position after ``blocks`` blocks: resume ``dataset`` from ``dataset_state`` in pass ``epoch``, with
    ``tokens`` (a read-only view, converted on demand) in front of what it yields."""

    blocks: int
    dataset_state: dict
    epoch: int
    tokens: np.ndarray


class StreamingBlocks(torch.utils.data.IterableDataset):
    """Blocks of ``seq_len`` tokens packed on the fly from the train documents of a stream (see the module).

    Yields ``{"input_ids": LongTensor[seq_len]}``, at most ``n_samples`` of them (None: one pass). Has no
    ``__len__`` (the Trainer needs ``max_steps``). ``state_dict(consumed=...)`` / ``load_state_dict(state)`` save
    and restore the exact position after any of the last ``history`` blocks yielded."""

    def __init__(self, cfg: DataConfig, tokenizer, seq_len: int, n_samples: int | None, rank: int = 0,
                 world_size: int = 1, dataset=None, history: int = HISTORY):
        import datasets  # only when streaming: minitron_hf.data imports this module, and datasets costs ~0.6 s
        from datasets.distributed import split_dataset_by_node

        if not isinstance(cfg.data, str):
            raise DataError("streaming reads one source; a blend (data: [...]) must be prepared (streaming: false)")
        if cfg.max_documents is not None:
            raise DataError(f"max_documents={cfg.max_documents} is not supported with streaming: true (a stream has "
                            f"no global document order across ranks); bound the run with its steps or samples")
        if seq_len < 2:
            raise DataError(f"seq_len={seq_len} must be >= 2")
        if n_samples is not None and n_samples < 1:
            raise DataError(f"n_samples={n_samples} must be >= 1 (or None for one pass over the stream)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank={rank} must be in [0, world_size={world_size})")
        if history < 1:
            raise DataError(f"history={history} must be >= 1")
        self.cfg, self.tokenizer, self.seq_len, self.n_samples = cfg, tokenizer, seq_len, n_samples
        self.rank, self.world_size, self.history = rank, world_size, history
        self.info = tokenizer_info(tokenizer)
        ds = self._open(cfg) if dataset is None else dataset
        if not isinstance(ds, datasets.IterableDataset):
            raise DataError(f"dataset must be a datasets.IterableDataset (load_dataset(..., streaming=True)), not "
                            f"{type(ds).__name__}")
        self.num_shards = ds.num_shards
        if world_size > 1:
            if ds.num_shards % world_size:
                logger.warning(
                    "streaming data=%r: its %d shard(s) do not divide among world_size=%d ranks, so every rank reads "
                    "every example of the stream and keeps 1 in %d (reading is repeated on every rank); a number of "
                    "shards (files) that is a multiple of the world size lets each rank read only its own",
                    cfg.data, ds.num_shards, world_size, world_size)
            ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
        self.dataset = ds
        self._initial_state = ds.state_dict()  # before any iteration: the beginning of this rank's stream
        self._pending: _Snapshot | None = None  # where the next iteration starts (load_state_dict)
        self._history: deque[_Snapshot] = deque([self._start()], maxlen=history)

    # ------------------------------------------------------------------------------ source

    @staticmethod
    def _open(cfg: DataConfig):
        import datasets

        if is_embedded(cfg.data):
            raise DataError(f"data={DEFAULT_DATA!r} is small and embedded: it is prepared, not streamed; set "
                            f"streaming: false")
        if is_prepared(cfg.data):
            raise DataError(f"data={cfg.data!r} is a prepared token folder; read it with streaming: false")
        path = Path(cfg.data).expanduser()
        if path.exists():
            files = local_files(path, cfg.data)
            kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
            builders = {kinds.get(f.suffix.lower()) for f in files}
            if None in builders:
                raise DataError(f"data={cfg.data!r}: .txt files cannot be streamed; use jsonl or parquet (or "
                                f"streaming: false)")
            if len(builders) > 1:
                raise DataError(f"data={cfg.data!r} mixes json/jsonl and parquet files; stream one kind at a time")
            try:
                return datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train",
                                             streaming=True)
            except Exception as e:
                raise DataError(f"data={cfg.data!r} could not be opened as a stream ({type(e).__name__}: {e})") from e
        if looks_like_path(cfg.data):
            raise DataError(f"data={cfg.data!r}: no such file or directory (streaming reads a Hub dataset id "
                            f"'owner/name' or local jsonl/json/parquet files)")
        return open_hub(cfg, streaming=True)

    # ------------------------------------------------------------------------------ iteration

    def _start(self) -> _Snapshot:
        return _Snapshot(0, self._initial_state, 0, np.empty(0, dtype=self.info["dtype"]))

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise DataError("StreamingBlocks must be read in the training process (dataloader_num_workers=0): its "
                            "resume state lives where it is iterated, and a DataLoader worker's copy is lost")
        start, self._pending = self._pending or self._start(), None
        self._history = deque([start], maxlen=self.history)
        return self._blocks(start)

    def _train_batches(self):
        """(texts, dataset state after each) of the train documents, a batch at a time, from the current position."""
        cfg, ds = self.cfg, self.dataset
        texts, states, chars = [], [], 0
        for i, row in enumerate(ds):
            text = row_text(row, cfg, f"row {i} of rank {self.rank}'s stream (from where it started)")
            if not text.strip() or split_of(digest(text), cfg) != "train":
                continue
            texts.append(text)
            states.append(ds.state_dict())  # the position just after this document
            chars += len(text)
            if len(texts) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
                yield texts, states
                texts, states, chars = [], [], 0
        if texts:
            yield texts, states

    def _blocks(self, start: _Snapshot):
        # ``seq``: stream tokens per block; a BOS-expecting tokenizer's blocks are BOS + seq_len - 1 of them (see
        # :mod:`minitron_hf.data.shards`)
        bos = self.info["bos_token_id"] if self.info["bos_per_document"] else None
        seq, n_samples, history = self.seq_len - (bos is not None), self.n_samples, self._history
        blocks, epoch = start.blocks, start.epoch
        if n_samples is not None and blocks >= n_samples:
            return
        # ``carry``: tokens read but not yet in a block. After a resume it holds the rest of the document the last
        # block ended in (read up to ``start.dataset_state``), which may be several blocks long; once those blocks
        # are cut it is always shorter than a block.
        carry = np.asarray(start.tokens, dtype=self.info["dtype"])

        def cut(buf, ends, states):
            """Blocks of ``buf`` (segments ending at ``ends``, the position after segment i being ``states[i]``),
            each with the position after it: the end of the segment holding its last token, and the tokens of that
            segment not in a block yet."""
            nonlocal blocks
            n_full = len(buf) // seq
            for j in range(n_full):
                p = (j + 1) * seq
                d = int(np.searchsorted(ends, p, side="left"))  # the first segment ending at or after p
                blocks += 1
                history.append(_Snapshot(blocks, states[d][0], states[d][1], buf[p:int(ends[d])]))
                ids = buf[p - seq:p].astype(np.int64)
                yield {"input_ids": torch.from_numpy(ids if bos is None else np.concatenate([[bos], ids]))}
                if n_samples is not None and blocks >= n_samples:
                    return True
            return False

        self.dataset.load_state_dict(copy.deepcopy(start.dataset_state))
        from_beginning = start.dataset_state == self._initial_state
        if len(carry) >= seq:  # blocks of the carried document come first, whatever the stream holds after it
            if (yield from cut(carry, np.array([len(carry)]), [(start.dataset_state, epoch)])):
                return
            carry = carry[len(carry) // seq * seq:]
        while True:
            documents = 0
            for texts, states in self._train_batches():
                documents += len(texts)
                flat, lengths = encode(self.tokenizer, texts, self.info)
                buf = np.concatenate([carry, flat]) if len(carry) else flat
                # one segment per document (lengths >= 1: the EOS); the carry is shorter than a block, so every
                # block ends in one of these documents and the carry needs no position of its own
                ends = len(carry) + np.cumsum(lengths)
                if (yield from cut(buf, ends, [(st, epoch) for st in states])):
                    return
                carry = buf[len(buf) // seq * seq:]
            # the stream ended: this pass is over
            if documents == 0 and from_beginning:
                raise DataError(f"streaming data={self.cfg.data!r}: rank {self.rank} of {self.world_size} found no "
                                f"non-empty train document in its stream (text_field={self.cfg.text_field!r})")
            if n_samples is None:
                if blocks == 0:
                    raise DataError(f"streaming data={self.cfg.data!r}: rank {self.rank}'s train documents hold "
                                    f"{len(carry):,} tokens, not one full block of seq_len={seq}")
                return
            epoch += 1
            if epoch >= self.cfg.max_epochs:
                raise DataError(
                    f"streaming data={self.cfg.data!r}: rank {self.rank} of {self.world_size} ran out of train "
                    f"documents after {blocks:,} blocks of seq_len={seq} ({epoch} pass(es), max_epochs="
                    f"{self.cfg.max_epochs}) but n_samples={n_samples:,} are needed; ask for fewer steps, a shorter "
                    f"seq_len, more data, or raise max_epochs")
            logger.info("streaming data=%r: rank %d starts pass %d over its stream after %d blocks", self.cfg.data,
                        self.rank, epoch + 1, blocks)
            from_beginning = True
            self.dataset.load_state_dict(copy.deepcopy(self._initial_state))

    def describe(self) -> dict:
        """What ``distill.json``/``correction.json`` record about the train data (as :meth:`Blocks.describe`)."""
        return {"streaming": self.cfg.data, "blocks_per_rank": self.n_samples, "world_size": self.world_size}

    def log_summary(self) -> None:
        logger.info("train data %s: streamed, %s blocks of %d tokens per rank, %d rank(s)", self.cfg.data,
                    f"{self.n_samples:,}" if self.n_samples is not None else "one pass of", self.seq_len,
                    self.world_size)

    # ------------------------------------------------------------------------------ resume

    def _identity(self) -> dict:
        c = self.cfg
        return {"data": c.data, "data_config": c.data_config, "data_split": c.data_split, "text_field": c.text_field,
                "split_seed": c.split_seed, "validation_fraction": c.validation_fraction,
                "calibration_fraction": c.calibration_fraction, "tokenizer": self.info["fingerprint"],
                "bos_per_document": self.info["bos_per_document"], "seq_len": self.seq_len, "rank": self.rank,
                "world_size": self.world_size, "num_shards": self.num_shards}

    def state_dict(self, consumed: int) -> dict:
        """The position after the first ``consumed`` blocks this rank yielded (counted from the start of the run,
        across resumes), as JSON-serialisable data for :meth:`load_state_dict`. Only the last ``history`` blocks'
        positions are kept: a count outside them (or beyond the blocks yielded) is a ValueError."""
        h = self._history
        first, last = h[0].blocks, h[-1].blocks
        if isinstance(consumed, bool) or not isinstance(consumed, (int, np.integer)) or not first <= consumed <= last:
            raise ValueError(
                f"state_dict(consumed={consumed!r}): this rank's stream has yielded {last:,} blocks and keeps the "
                f"position after blocks {first:,}..{last:,} (the last history={self.history} blocks); a count "
                f"outside them cannot be resumed exactly (a DataLoader reading further ahead than history blocks "
                f"needs a larger history)")
        snap = h[int(consumed) - first]
        assert snap.blocks == consumed
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "blocks": snap.blocks, "epoch": snap.epoch,
                "dataset_state": copy.deepcopy(snap.dataset_state), "tokens": snap.tokens.tolist(),
                "stream": self._identity()}

    def load_state_dict(self, state: dict) -> None:
        """Start the next iteration at the position ``state`` (from :meth:`state_dict`) describes."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            what = f"format {state.get('format')!r}" if isinstance(state, dict) else type(state).__name__
            raise DataError(f"not a stream state of minitron-hf ({what}); it must come from StreamingBlocks.state_dict")
        if state.get("version") != STATE_VERSION:
            raise DataError(f"stream state version {state.get('version')!r} is not {STATE_VERSION}; it was written by "
                            f"another version of minitron-hf")
        mine, saved = self._identity(), state.get("stream", {})
        for k, v in mine.items():
            if saved.get(k) != v:
                raise DataError(f"the stream state was saved with {k}={saved.get(k)!r} but this stream has {k}={v!r}; "
                                f"resume with the same data, split, tokenizer, seq_len and number of processes")
        tokens = np.asarray(state["tokens"], dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.info["vocab_size"]):
            raise DataError("the stream state holds token ids outside this tokenizer's vocabulary")
        snap = _Snapshot(int(state["blocks"]), state["dataset_state"], int(state["epoch"]),
                         tokens.astype(self.info["dtype"]))
        self._pending = snap
        self._history = deque([snap], maxlen=self.history)
