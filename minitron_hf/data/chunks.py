"""The files of a preparation on disk: chunks written under temporary names and committed, the finished ones found
again on resume, the digest table of duplicate removal, and the removal of what a preparation wrote (see
:mod:`minitron_hf.data.prepare` for the layout)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..outputs import read_json, write_json_atomically
from .sources import MANIFEST, SPLITS

PROGRESS = "prepare.json"


def _write_tokens(fh, tokens: np.ndarray) -> None:
    """Append ``tokens`` to an open shard (the one place shard bytes are written)."""
    fh.write(tokens.tobytes())


# --------------------------------------------------------------------------------------------- duplicates


class DigestSet:
    """Set of 8-byte document digests in an open-addressing numpy table: 16-32 bytes per document (a Python set of
    the same would take about 70). Two distinct documents share an 8-byte digest with probability n^2 / 2^65
    (about 3% at a billion documents), in which case the later one is dropped as a duplicate."""

    def __init__(self, capacity: int = 1 << 16):
        self.table = np.zeros(capacity, dtype=np.uint64)
        self.n = 0

    @staticmethod
    def key(d: bytes) -> int:
        return int.from_bytes(d[:8], "little") or 1  # 0 marks an empty slot

    def add(self, k: int) -> bool:
        """Add ``k`` (a :meth:`key`); False if it was already there."""
        if 2 * (self.n + 1) > len(self.table):
            self._grow()
        table, mask = self.table, len(self.table) - 1
        i = k & mask
        while True:
            v = int(table[i])
            if v == 0:
                table[i] = k
                self.n += 1
                return True
            if v == k:
                return False
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self.table[self.table != 0]
        self.table = np.zeros(2 * len(self.table), dtype=np.uint64)
        self.n = 0
        for k in old.tolist():
            self.add(k)

    def __len__(self) -> int:
        return self.n


# --------------------------------------------------------------------------------------------- writing


class Chunk:
    """The files of one chunk being written, under temporary names until :meth:`commit`."""

    def __init__(self, out: Path, index: int, dtype: str):
        self.out, self.index, self.dtype = out, index, dtype
        self.files = {s: open(out / f".{s}-{index:05d}.bin.tmp", "wb") for s in SPLITS}
        self.starts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self.tokens = dict.fromkeys(SPLITS, 0)
        self.docs = dict.fromkeys(SPLITS, 0)
        self.digests: list[int] = []
        self.chars = 0

    def add(self, split: str, tokens: np.ndarray, lengths: np.ndarray) -> None:
        starts = self.tokens[split] + np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
        self.starts[split].append(starts.astype(np.int64))
        _write_tokens(self.files[split], tokens)
        self.tokens[split] += int(lengths.sum())
        self.docs[split] += len(lengths)

    def commit(self, source_docs: int) -> dict:
        shards = {}
        for s in SPLITS:
            f = self.files[s]
            f.flush()
            os.fsync(f.fileno())
            f.close()
            tmp = self.out / f".{s}-{self.index:05d}.bin.tmp"
            if not self.docs[s]:
                tmp.unlink()
                continue
            name = f"{s}-{self.index:05d}"
            np.save(self.out / f".{name}.idx.tmp.npy", np.concatenate(self.starts[s]))
            os.replace(self.out / f".{name}.idx.tmp.npy", self.out / f"{name}.idx.npy")
            os.replace(tmp, self.out / f"{name}.bin")
            shards[s] = {"file": f"{name}.bin", "index": f"{name}.idx.npy", "tokens": self.tokens[s],
                         "documents": self.docs[s]}
        np.save(self.out / f".chunk-{self.index:05d}.digests.tmp.npy", np.array(self.digests, dtype=np.uint64))
        os.replace(self.out / f".chunk-{self.index:05d}.digests.tmp.npy", self.out / f"chunk-{self.index:05d}.digests.npy")
        record = {"index": self.index, "source_documents_end": source_docs, "shards": shards}
        write_json_atomically(self.out / f"chunk-{self.index:05d}.json", record)  # the commit point
        return record

    def abort(self) -> None:
        for s, f in self.files.items():
            f.close()
            (self.out / f".{s}-{self.index:05d}.bin.tmp").unlink(missing_ok=True)


def finished_chunks(out: Path, dtype: str) -> list[dict]:
    """Chunk records in order, up to the first gap; everything after (a half-written chunk) is removed."""
    itemsize = np.dtype(dtype).itemsize
    records, i = [], 0
    while (out / f"chunk-{i:05d}.json").is_file():
        rec = read_json(out / f"chunk-{i:05d}.json")
        ok = all((out / sh["file"]).is_file() and (out / sh["file"]).stat().st_size
                 == sh["tokens"] * itemsize for sh in rec["shards"].values())
        if not ok or not (out / f"chunk-{i:05d}.digests.npy").is_file():
            break
        records.append(rec)
        i += 1
    for p in out.iterdir():  # temporary files and anything of chunks from i on
        name = p.name
        if name.startswith(".") or (name[:5] in ("chunk",) and int(name[6:11]) >= i) or \
                any(name.startswith(f"{s}-") and int(name[len(s) + 1:len(s) + 6]) >= i for s in SPLITS):
            p.unlink()
    return records


def _ours(name: str) -> bool:
    return name in (MANIFEST, PROGRESS) or name.startswith((".", "chunk-", *(f"{s}-" for s in SPLITS)))


def remove_ours(out: Path) -> None:
    """Remove the files a preparation wrote (only those: a user's own files in the folder stay)."""
    (out / MANIFEST).unlink(missing_ok=True)  # first: the folder stops counting as complete before shards go
    for p in out.iterdir():
        if p.is_file() and _ours(p.name):
            p.unlink()


def discard(out: Path, created: bool) -> None:
    """Undo a failed first preparation of ``out``: its files, and the folder itself if this preparation created it."""
    if out.is_dir():
        remove_ours(out)
        if created and not any(p.is_file() or p.is_symlink() for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
