"""Read without loading: prepared token shards as memory maps, blocks cut at read time, shuffled and blended by index.

- :class:`Prepared` opens a prepared folder: its manifest (every key the reader uses, with its type), the shards'
  sizes and the document indexes are checked when it is opened (a missing or truncated shard, a corrupt index, a
  manifest of another tokenizer are errors naming the file), but no token is read until a block is asked for; each
  block read is checked against the vocabulary (a shard overwritten with other bytes is an error naming it).
- :class:`TokenStream` is one split: the shards' tokens in order, as if concatenated. Block ``k`` of length
  ``L`` is tokens ``[k*L, (k+1)*L)`` of that stream: the same packing as concatenating the documents and cutting
  (a block may span two shards; the tail shorter than ``L`` is not used). For a tokenizer that starts every
  sequence with BOS (Llama-3, Gemma: ``bos_per_document`` in the manifest) a block is BOS + the next ``L - 1``
  stream tokens instead: such models are only ever trained on sequences that start with BOS, and a block cut at an
  arbitrary offset would not (Gemma 3 270M on python-docs: validation loss 2.76 without a BOS at block start,
  2.00 with one; benchmarks/results/bos_packing.md).
- :class:`Permutation` shuffles block indices without storing them: a keyed Feistel network over the index bits
  with cycle walking, a bijection of ``[0, n)`` computed per index in O(1) time and memory.
- :class:`Blocks` is the map-style dataset every stage reads: sample ``i`` of a run -> (source, epoch, block).
  Blends draw sources in their weights' proportions by a fixed interleaving pattern of period ``PERIOD``; each
  source's blocks are visited in a fresh permutation per epoch. Any sample is found from its index alone, which
  is what makes resuming at step N cost nothing (see :class:`ResumableSampler`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..outputs import CorruptFileError, read_json
from .prepare import FORMAT
from .sources import MANIFEST, SPLITS, DataError

logger = logging.getLogger(__name__)

PERIOD = 10_000  # blend pattern length: weights are followed to 1e-4


class Prepared:
    """A folder written by ``minitron data prepare`` (or the cache), checked on open."""

    def __init__(self, path, tokenizer_info: dict | None = None, field: str = "data"):
        self.path = Path(path).expanduser()
        self.field = field
        mf = self.path / MANIFEST
        try:
            self.manifest = m = read_json(mf)
        except CorruptFileError as e:
            raise DataError(f"{field}={str(path)!r}: {e}") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("splits"), dict):
            raise DataError(f"{field}={str(path)!r}: {mf} is not a manifest of prepared token shards (format "
                            f"{m.get('format') if isinstance(m, dict) else None!r}); prepare the data again with "
                            f"`minitron data prepare`")
        check_manifest(m, f"{field}={str(path)!r}: {mf}")
        if tokenizer_info is not None:
            self.check_tokenizer(tokenizer_info)
        self.streams = {s: TokenStream(self, s) for s in SPLITS}

    def check_tokenizer(self, info: dict) -> None:
        mine = self.manifest.get("tokenizer", {})
        if mine.get("fingerprint") != info["fingerprint"]:
            raise DataError(
                f"{self.field}={str(self.path)!r} was prepared with another tokenizer ({mine.get('name')!r}, "
                f"{mine.get('vocab_size')} tokens, fingerprint {str(mine.get('fingerprint'))[:12]}) than the model's "
                f"({info['name']!r}, {info['vocab_size']} tokens, fingerprint {info['fingerprint'][:12]}); prepare it "
                f"again with this model's tokenizer: minitron data prepare --tokenizer MODEL ...")

    def __getitem__(self, split: str) -> "TokenStream":
        if split not in SPLITS:
            raise DataError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        return self.streams[split]

    @property
    def name(self) -> str:
        src = self.manifest.get("source")
        return str(src.get("data", self.path) if isinstance(src, dict) else self.path)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


_SCHEMA = {"dtype": lambda v: v in ("uint16", "uint32"), "tokenizer": lambda v: isinstance(v, dict)}
_TOKENIZER = {"fingerprint": lambda v: isinstance(v, str), "vocab_size": lambda v: _is_int(v) and v > 0,
              "bos_per_document": lambda v: isinstance(v, bool),
              "bos_token_id": lambda v: v is None or _is_int(v), "eos_token_id": _is_int}
_SPLIT = {"shards": lambda v: isinstance(v, list), "tokens": _is_int, "documents": _is_int}
def _is_name(v) -> bool:
    return isinstance(v, str) and v not in ("", ".", "..") and Path(v).name == v


_SHARD = {"file": _is_name, "index": _is_name, "tokens": _is_int, "documents": _is_int}
_WANT = {"dtype": "'uint16' or 'uint32'", "tokenizer": "an object", "fingerprint": "a string",
         "vocab_size": "an integer > 0", "bos_per_document": "true or false", "bos_token_id": "an integer >= 0 or null",
         "eos_token_id": "an integer >= 0", "shards": "a list", "tokens": "an integer >= 0",
         "documents": "an integer >= 0", "file": "a file name in the folder", "index": "a file name in the folder"}


def check_manifest(m: dict, where: str) -> None:
    """Every key of a manifest that the reader uses, with its type (a manifest is input like any other: edited, cut,
    or another program's); raises :class:`DataError` naming the file and the key."""

    def check(obj, schema: dict, prefix: str) -> None:
        if not isinstance(obj, dict):
            raise DataError(f"{where}: {prefix.rstrip('.')}={obj!r} must be an object; prepare the data again")
        for k, ok in schema.items():
            if k not in obj:
                raise DataError(f"{where}: the key {prefix}{k} is missing ({_WANT[k]} expected); prepare the data "
                                f"again")
            if not ok(obj[k]):
                raise DataError(f"{where}: {prefix}{k}={obj[k]!r} must be {_WANT[k]}; prepare the data again")

    check(m, _SCHEMA, "")
    tok = m["tokenizer"]
    check(tok, _TOKENIZER, "tokenizer.")
    for k in ("bos_token_id", "eos_token_id"):
        if tok[k] is not None and tok[k] >= tok["vocab_size"]:
            raise DataError(f"{where}: tokenizer.{k}={tok[k]} is outside tokenizer.vocab_size={tok['vocab_size']}; "
                            f"prepare the data again")
    if tok["bos_per_document"] and tok["bos_token_id"] is None:
        raise DataError(f"{where}: tokenizer.bos_per_document is true but tokenizer.bos_token_id is null; prepare "
                        f"the data again")
    unknown = sorted(set(m["splits"]) - set(SPLITS))
    if unknown:
        raise DataError(f"{where}: splits.{unknown[0]} is not a split (allowed: {', '.join(SPLITS)}); prepare the "
                        f"data again")
    for s, info in m["splits"].items():
        check(info, _SPLIT, f"splits.{s}.")
        for i, sh in enumerate(info["shards"]):
            check(sh, _SHARD, f"splits.{s}.shards[{i}].")
        if sum(sh["tokens"] for sh in info["shards"]) != info["tokens"]:
            raise DataError(f"{where}: splits.{s}.tokens={info['tokens']} is not the sum of its shards' tokens; "
                            f"prepare the data again")


class TokenStream:
    """The tokens of one split: shards as read-only memory maps, opened on first use."""

    def __init__(self, prepared: Prepared, split: str):
        self.prepared, self.split = prepared, split
        info = prepared.manifest["splits"].get(split, {"shards": [], "tokens": 0, "documents": 0})
        dtype = np.dtype(prepared.manifest.get("dtype", "uint16"))
        self.dtype, self.shards = dtype, []
        where = f"{prepared.field}={str(prepared.path)!r}"
        for sh in info.get("shards", []):
            f = prepared.path / sh["file"]
            if not f.is_file():
                raise DataError(f"{where}: shard {f} is missing; prepare the data again (minitron data prepare "
                                f"resumes where it stopped only before its manifest is written)")
            size = f.stat().st_size
            if size != sh["tokens"] * dtype.itemsize:
                raise DataError(f"{where}: shard {f} holds {size:,} bytes, the manifest promises {sh['tokens']:,} "
                                f"tokens ({sh['tokens'] * dtype.itemsize:,} bytes): it is truncated or was changed; "
                                f"prepare the data again")
            self._check_index(prepared.path / sh["index"], sh, where)
            self.shards.append((f, sh["tokens"]))
        self.ends = np.cumsum([n for _, n in self.shards], dtype=np.int64)
        self.n_tokens = int(self.ends[-1]) if len(self.ends) else 0
        self.n_documents = int(info.get("documents", 0))
        tok = prepared.manifest.get("tokenizer", {})
        self.bos = tok.get("bos_token_id") if tok.get("bos_per_document") else None
        self.vocab_size = int(tok["vocab_size"])
        self._maps: dict[int, np.memmap] = {}

    @staticmethod
    def _check_index(path: Path, sh: dict, where: str) -> None:
        try:
            idx = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{where}: index {path} is missing or corrupt ({type(e).__name__}: {e}); prepare the "
                            f"data again") from None
        # O(1) per shard, every process, every stage: shape, dtype, ends (np.load's header check covers the size).
        # Reading whole indexes here would cost 8 bytes per document per open: 3 GB per rank at 400M documents.
        bad = (idx.ndim != 1 or len(idx) != sh["documents"] or idx.dtype != np.int64
               or (len(idx) and (idx[0] != 0 or idx[-1] >= sh["tokens"] or (len(idx) > 1 and idx[1] <= 0))))
        if bad:
            raise DataError(f"{where}: index {path} is corrupt (it must hold {sh['documents']:,} increasing document "
                            f"offsets below {sh['tokens']:,}); prepare the data again")

    def stride(self, seq_len: int) -> int:
        """Stream tokens per block: ``seq_len``, or ``seq_len - 1`` after the BOS of a BOS-expecting tokenizer."""
        return seq_len - (self.bos is not None)

    def n_blocks(self, seq_len: int) -> int:
        return self.n_tokens // self.stride(seq_len)

    def _map(self, i: int) -> np.memmap:
        if i not in self._maps:
            f, n = self.shards[i]
            self._maps[i] = np.memmap(f, dtype=self.dtype, mode="r", shape=(n,))
        return self._maps[i]

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens ``[start, end)`` of the split, across shard boundaries."""
        out = np.empty(end - start, dtype=np.int64)
        pos = start
        i = int(np.searchsorted(self.ends, start, side="right"))
        while pos < end:
            lo = int(self.ends[i - 1]) if i else 0
            take = min(end, int(self.ends[i])) - pos
            piece = self._map(i)[pos - lo:pos - lo + take]
            if take and int(piece.max()) >= self.vocab_size:  # one vectorised max per block: cheap
                f = self.shards[i][0]
                at = pos - lo + int(np.argmax(piece >= self.vocab_size))
                raise DataError(f"{self.prepared.field}={str(self.prepared.path)!r}: shard {f} holds token id "
                                f"{int(piece.max())} (at token {at:,}), outside the vocabulary of "
                                f"{self.vocab_size:,} tokens of its manifest: the shard was overwritten or "
                                f"damaged; prepare the data again")
            out[pos - start:pos - start + take] = piece
            pos += take
            i += 1
        return out

    def block(self, k: int, seq_len: int) -> np.ndarray:
        n = self.stride(seq_len)
        ids = self.read(k * n, (k + 1) * n)
        return ids if self.bos is None else np.concatenate([np.array([self.bos], dtype=np.int64), ids])

    def __getstate__(self):  # DataLoader workers re-open the maps
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state


def _mix(x: int, key: int) -> int:
    """splitmix64 of x ^ key: the Feistel round function."""
    z = (x ^ key) + 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


class Permutation:
    """A seeded bijection of ``[0, n)``, evaluated per index: O(1) memory whatever ``n`` (a stored permutation of
    the 46M blocks of 380B tokens at 8192 would take 370 MB per rank)."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int):
        self.n = n
        bits = max(2, math.ceil(math.log2(max(n, 2))))
        bits += bits % 2
        self.half, self.mask = bits // 2, (1 << (bits // 2)) - 1
        self.keys = [_mix(seed * 1_000_003 + r, 0x5DEECE66D) for r in range(self.ROUNDS)]

    def _once(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right, k) & self.mask)
        return (left << self.half) | right

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        x = self._once(i)
        while x >= self.n:  # cycle walking: the domain is at most 4n, so under 4 rounds on average
            x = self._once(x)
        return x


def blend_pattern(weights: list[float], period: int = PERIOD) -> tuple[np.ndarray, np.ndarray]:
    """(source of each position in one period, that position's index among its source's positions). Counts per
    source follow the weights by largest remainder; positions interleave greedily (Megatron's blend rule: the
    source furthest behind its share goes next), so any window is close to the weights."""
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    counts = np.floor(w * period).astype(np.int64)
    for i in np.argsort(-(w * period - counts))[: period - counts.sum()]:
        counts[i] += 1
    if np.any(counts == 0):
        i = int(np.flatnonzero(counts == 0)[0])
        raise DataError(f"data[{i}].weight is {w[i]:.2e} of the blend, below 1/{period}: the source would never be "
                        f"drawn; raise its weight or drop it")
    source = np.empty(period, dtype=np.int64)
    rank = np.empty(period, dtype=np.int64)
    taken = np.zeros(len(w), dtype=np.int64)
    for p in range(period):
        s = int(np.argmax(counts * (p + 1) / period - taken))
        source[p], rank[p] = s, taken[s]
        taken[s] += 1
    return source, rank


@dataclass
class Source:
    stream: TokenStream
    weight: float
    name: str


class Blocks(torch.utils.data.Dataset):
    """``n`` blocks of ``seq_len`` tokens drawn from one or more token streams, as a map-style dataset.

    Sample ``i``: the blend pattern gives its source ``s`` and its rank ``j`` among that source's samples; epoch
    ``j // n_s`` and position ``j % n_s`` give the block through that epoch's :class:`Permutation` (or in stream
    order when ``shuffle`` is off). Only the memory maps and the pattern are held: reading sample ``i`` touches
    its ``seq_len`` tokens and nothing else, so each rank reads only its own blocks.
    """

    def __init__(self, sources: list[Source], seq_len: int, n: int | None = None, seed: int = 0,
                 shuffle: bool = True, max_epochs: int = 1, what: str = "train"):
        if seq_len < 2:
            raise DataError(f"seq_len={seq_len} must be >= 2")
        self.sources, self.seq_len, self.seed, self.shuffle = sources, seq_len, seed, shuffle
        self.sizes = [s.stream.n_blocks(seq_len) for s in sources]
        for s, nb in zip(sources, self.sizes):
            if nb == 0:
                raise DataError(f"the {s.stream.split} split of data={s.name!r} yields no full block of "
                                f"seq_len={seq_len} tokens ({s.stream.n_tokens:,} tokens in all); "
                                + ("lower validation_fraction/calibration_fraction, a shorter seq_len, or more data"
                                   if s.stream.split == "train" else
                                   f"raise {s.stream.split}_fraction, a shorter seq_len, or more data"))
        self.pattern, self.rank = blend_pattern([s.weight for s in sources])
        self.per_period = np.bincount(self.pattern, minlength=len(sources))
        if n is None:  # one pass over the source that runs out first
            n = min(self._positions_for(k, nb) for k, nb in enumerate(self.sizes))
        self.n = n
        self.epochs = [self.source_samples(k) / nb for k, nb in enumerate(self.sizes)]
        for k, (s, e) in enumerate(zip(sources, self.epochs)):
            if e > max_epochs + 1e-12:
                avail = min(self._positions_for(k2, nb * max_epochs) for k2, nb in enumerate(self.sizes))
                raise DataError(
                    f"{what}: {n:,} blocks of seq_len={seq_len} are needed but data={s.name!r} holds "
                    f"{self.sizes[k]:,} {s.stream.split} blocks ({s.stream.n_tokens:,} tokens)"
                    + (f" at weight {s.weight:.3f}" if len(sources) > 1 else "")
                    + f": that is {e:.2f} passes over it and max_epochs={max_epochs}; at most {avail:,} blocks fit. "
                    f"Ask for fewer steps or samples, a shorter seq_len, more data, or raise max_epochs")
        self._perms: dict[tuple[int, int], Permutation] = {}

    def _positions_for(self, k: int, nb: int) -> int:
        """The largest sample count whose share of source ``k`` is at most ``nb`` blocks."""
        full, left = divmod(nb, int(self.per_period[k]))
        pos = np.flatnonzero(self.pattern == k)
        return full * PERIOD + (int(pos[left]) if left < len(pos) else PERIOD)

    def source_samples(self, k: int) -> int:
        """How many of the ``n`` samples come from source ``k``."""
        full, rest = divmod(self.n, PERIOD)
        return full * int(self.per_period[k]) + int(np.count_nonzero(self.pattern[:rest] == k))

    def locate(self, i: int) -> tuple[int, int, int]:
        """(source, epoch, block index in its stream) of sample ``i``."""
        if not 0 <= i < self.n:
            raise IndexError(f"sample {i} of {self.n}")
        period, p = divmod(i, PERIOD)
        k = int(self.pattern[p])
        j = period * int(self.per_period[k]) + int(self.rank[p])
        epoch, pos = divmod(j, self.sizes[k])
        if self.shuffle:
            perm = self._perms.get((k, epoch))
            if perm is None:
                perm = self._perms[(k, epoch)] = Permutation(self.sizes[k], self.seed * 7919 + k * 104_729 + epoch)
            pos = perm(pos)
        return k, epoch, pos

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i) -> dict:
        k, _, b = self.locate(int(i))
        return {"input_ids": torch.from_numpy(self.sources[k].stream.block(b, self.seq_len))}

    def tensor(self) -> torch.LongTensor:
        """All ``n`` blocks as one [n, seq_len] tensor (for the small validation and calibration sets)."""
        return torch.stack([self[i]["input_ids"] for i in range(self.n)]) if self.n else \
            torch.empty(0, self.seq_len, dtype=torch.long)

    def describe(self) -> dict:
        """Per source: samples drawn and passes over its blocks (the log and ``distill.json`` show it)."""
        return {s.name: {"weight": round(s.weight, 6), "blocks_available": nb, "samples": self.source_samples(k),
                         "epochs": round(self.source_samples(k) / nb, 4)}
                for k, (s, nb) in enumerate(zip(self.sources, self.sizes))}


    def log_summary(self) -> None:
        """One line per source: what a run reads, and how many passes over each source's blocks that is."""
        for name, d in self.describe().items():
            logger.info("train data %s: %s samples of %d tokens from %s blocks (weight %.3f): %.3f epochs", name,
                        f"{d['samples']:,}", self.seq_len, f"{d['blocks_available']:,}", d["weight"], d["epochs"])


class ResumableSampler(torch.utils.data.Sampler):
    """Sample indices ``start, start+1, ..., n-1`` of a :class:`Blocks` dataset (already shuffled by index).

    Resuming at step N sets ``start`` to the samples consumed before it (N x per-device batch x accumulation x
    world size: accelerate hands consecutive batches of this sampler to consecutive ranks) instead of letting the
    Trainer iterate over the first N steps' batches, so resuming at 90% of a corpus costs what resuming at 10%
    does, and the next batches are exactly those the uninterrupted run would have read."""

    def __init__(self, n: int, start: int = 0):
        self.n, self.start = n, start

    def __iter__(self):
        return iter(range(self.start, self.n))

    def __len__(self) -> int:
        return self.n - self.start
