"""Tokenize once, read without loading: prepare -> shards -> Blocks, blends, exact resume, and every bad input."""

import copy
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from minitron_hf.data import (Blocks, DataConfig, DataError, Permutation, Prepared, ResumableSampler, Source,
                              blend_pattern, collate_blocks, digest, load_blocks, prepare,
                              python_docs_documents, split_of, tokenizer_info, train_blocks)

pytestmark = pytest.mark.slow  # data preparation end to end (the real tokenizer, python-docs)


def naive_stream(texts, tok, bos=None):
    out = []
    for t in texts:
        out += ([bos] if bos is not None else []) + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


@pytest.fixture(scope="module")
def tok(default_tokenizer):
    return default_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A jsonl of real text (pydoc topics and stdlib sources), with exact duplicates, about 2.5 MB."""
    d = tmp_path_factory.mktemp("corpus")
    docs = list(dict.fromkeys(t for _, t in python_docs_documents()[:400]))
    rows = docs + docs[:25]  # 25 exact duplicates
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return d / "c.jsonl", docs


def split_texts(docs, cfg, split):
    seen, out = set(), []
    for t in docs:
        if t.strip() and t not in seen:
            seen.add(t)
            if split_of(digest(t), cfg) == split:
                out.append(t)
    return out


# -- prepare -------------------------------------------------------------------------------------------

@pytest.mark.multiprocess
def test_prepare_writes_the_naive_streams_and_is_independent_of_num_proc(tmp_path, tok, corpus):
    path, docs = corpus
    cfg = DataConfig(data=str(path))
    m1 = prepare(cfg, tok, tmp_path / "p1", shard_mb=1, num_proc=1, progress=False)
    assert m1["chunks"] >= 2 and m1["dtype"] == "uint16" and m1["documents"]["duplicates_dropped"] == 25
    p = Prepared(tmp_path / "p1", tokenizer_info(tok))
    for split in ("train", "validation", "calibration"):
        ref = naive_stream(split_texts(docs, cfg, split), tok)
        stream = p[split]
        assert stream.n_tokens == len(ref) == m1["splits"][split]["tokens"]
        assert stream.read(0, stream.n_tokens).tolist() == ref  # shard boundaries are invisible
    # two worker processes write byte-identical shards
    m2 = prepare(cfg, tok, tmp_path / "p2", shard_mb=1, num_proc=2, progress=False)
    assert m2["splits"] == m1["splits"]
    for f in sorted((tmp_path / "p1").glob("*.bin")):
        assert f.read_bytes() == (tmp_path / "p2" / f.name).read_bytes()
    # the same call again reuses it; other data into the same folder is refused, files are untouched
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "p1").iterdir()}
    assert prepare(cfg, tok, tmp_path / "p1", shard_mb=1, progress=False)["key"] == m1["key"]
    with pytest.raises(DataError, match="already holds prepared data of another source.*--overwrite"):
        prepare(DataConfig(data=str(path), split_seed=3), tok, tmp_path / "p1", shard_mb=1, progress=False)
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "p1").iterdir()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not a prepared-data folder"):
        prepare(cfg, tok, tmp_path / "mine", overwrite=True, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_tokenizer_fingerprint_is_stable_across_calls(default_model_dir):
    """A fresh tokenizer's first call sets padding/truncation on its backend; the fingerprint must not change."""
    from minitron_hf.loading import load_tokenizer

    fresh = load_tokenizer(str(default_model_dir))
    before = tokenizer_info(fresh)["fingerprint"]
    fresh(["a b", "c"], padding=True, truncation=True, max_length=4)
    assert tokenizer_info(fresh)["fingerprint"] == before


def test_bos_follows_the_tokenizer(tmp_path, tok, corpus):
    path, docs = corpus
    bos_tok = copy.deepcopy(tok)
    bos_tok.add_bos_token = True  # a Llama-3 / Gemma style tokenizer: add_special_tokens=True starts with BOS
    assert bos_tok("a")["input_ids"][0] == bos_tok.bos_token_id
    cfg = DataConfig(data=str(path), max_documents=40)
    info = tokenizer_info(bos_tok)
    assert info["bos_per_document"] and not tokenizer_info(tok)["bos_per_document"]
    assert info["fingerprint"] != tokenizer_info(tok)["fingerprint"]
    prepare(cfg, bos_tok, tmp_path / "bos", progress=False)
    stream = Prepared(tmp_path / "bos", info)["train"]
    texts = split_texts(docs[:40], cfg, "train")
    ref = naive_stream(texts, tok, bos=bos_tok.bos_token_id)
    assert stream.read(0, stream.n_tokens).tolist() == ref
    # every block starts with BOS, then the next seq_len - 1 tokens of the stream
    blocks = Blocks([Source(stream, 1.0, "c")], 16, shuffle=False).tensor().tolist()
    assert len(blocks) == len(ref) // 15
    assert blocks == [[bos_tok.bos_token_id] + ref[k * 15:(k + 1) * 15] for k in range(len(blocks))]
    with pytest.raises(DataError, match="prepared with another tokenizer.*prepare it again"):
        Prepared(tmp_path / "bos", tokenizer_info(tok))


@pytest.mark.multiprocess
def test_killed_prepare_resumes_at_its_first_unfinished_chunk(tmp_path, tok, corpus, default_model_dir):
    path, _ = corpus
    clean = tmp_path / "clean"
    prepare(DataConfig(data=str(path)), tok, clean, shard_mb=1, progress=False)
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "minitron_hf.cli", "data", "prepare", "--data", str(path), "--output", str(out),
           "--tokenizer", str(default_model_dir), "--shard-mb", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (out / "chunk-00000.json").exists() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (out / "manifest.json").exists():
        pytest.skip("the preparation finished before it could be killed")
    assert (out / "chunk-00000.json").exists()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming the preparation" in r.stderr
    names = sorted(f.name for f in clean.iterdir() if f.suffix == ".bin")
    assert names == sorted(f.name for f in out.iterdir() if f.suffix == ".bin")
    for n in names:
        assert (clean / n).read_bytes() == (out / n).read_bytes()
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporary files left


# -- read ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_permutation_is_a_bijection(n):
    p = Permutation(n, seed=5)
    out = [p(i) for i in range(n)]
    assert sorted(out) == list(range(n))
    if n > 16:
        assert out != list(range(n)) and out != [Permutation(n, seed=6)(i) for i in range(n)]


def test_blocks_in_order_equal_naive_packing_and_shuffled_are_a_permutation(tmp_path, tok, corpus):
    path, docs = corpus
    cfg = DataConfig(data=str(path))
    prepare(cfg, tok, tmp_path / "p", shard_mb=1, progress=False)
    stream = Prepared(tmp_path / "p")["train"]
    ref = naive_stream(split_texts(docs, cfg, "train"), tok)
    for L in (7, 256):
        ordered = Blocks([Source(stream, 1.0, "c")], L, shuffle=False).tensor()
        assert ordered.shape == (len(ref) // L, L)
        assert ordered.flatten().tolist() == ref[: ordered.numel()]  # today's packing, remainder dropped
        shuffled = Blocks([Source(stream, 1.0, "c")], L).tensor()
        assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, ordered.tolist()))
        assert not torch.equal(shuffled, ordered)


def test_two_ranks_read_disjoint_blocks_that_cover_the_split(tmp_path, tok, corpus):
    """accelerate's own sharding of the Trainer's batches over 2 processes, applied to our sampler."""
    from accelerate.data_loader import prepare_data_loader

    path, _ = corpus
    ds = train_blocks(DataConfig(data=str(path)), tok, 64, None)

    class Reads(torch.utils.data.Dataset):  # which samples each rank asks the dataset for
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            ds[i]
            return i

    seen = []
    for rank in (0, 1):
        dl = torch.utils.data.DataLoader(Reads(), batch_size=4, sampler=ResumableSampler(len(ds)), drop_last=True)
        dl = prepare_data_loader(dl, torch.device("cpu"), num_processes=2, process_index=rank, put_on_device=False)
        seen.append([i for b in dl for i in b.tolist()])
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0])) == len(seen[0])
    assert set(seen[0]) | set(seen[1]) == set(range(len(ds) - len(ds) % 8))  # all but an incomplete global batch
    blocks = {ds.locate(i)[2] for i in seen[0] + seen[1]}
    assert len(blocks) == len(seen[0]) + len(seen[1])  # distinct blocks of the split


def test_blend_proportions_and_epochs(tmp_path, tok, corpus):
    path, _ = corpus
    prepare(DataConfig(data=str(path)), tok, tmp_path / "a", progress=False)
    other = tmp_path / "other.jsonl"  # documents the first source does not have
    other.write_text("".join(json.dumps({"text": t}) + "\n" for _, t in python_docs_documents()[420:480]))
    prepare(DataConfig(data=str(other)), tok, tmp_path / "b", progress=False)
    src, rank = blend_pattern([0.7, 0.3], period=1000)
    assert np.bincount(src).tolist() == [700, 300] and sorted(rank[src == 1].tolist()) == list(range(300))
    for lo in range(0, 1000, 100):  # interleaved: every window of 100 is within 1 of the weights
        assert abs(np.count_nonzero(src[lo:lo + 100] == 0) - 70) <= 1
    cfg = DataConfig(data=[{"data": str(tmp_path / "a"), "weight": 7}, {"data": str(tmp_path / "b"), "weight": 3}],
                     max_epochs=3)
    ds = train_blocks(cfg, tok, 32, 3000)
    which = [ds.locate(i)[0] for i in range(3000)]
    share = which.count(0) / 3000
    assert abs(share - 0.7) < 3 * (0.7 * 0.3 / 3000) ** 0.5  # within sampling error (it is in fact exact)
    a_blocks = {tuple(x) for x in Blocks([Source(Prepared(tmp_path / "a")["train"], 1, "a")], 32,
                                          shuffle=False).tensor().tolist()}
    for i in range(0, 3000, 97):
        assert (tuple(ds[i]["input_ids"].tolist()) in a_blocks) == (which[i] == 0)
    d = ds.describe()
    assert d[str(path)]["samples"] == which.count(0) and d[str(path)]["epochs"] > 0
    # a source's blocks repeat only across epochs: within one epoch each block once
    first_epoch = [ds.locate(i)[2] for i in range(3000) if ds.locate(i)[:2] == (1, 0)]
    assert len(first_epoch) == len(set(first_epoch))
    with pytest.raises(DataError, match=r"data\[1\].weight=0 must be a number > 0"):
        train_blocks(DataConfig(data=[{"data": "python-docs", "weight": 1}, {"data": "python-docs", "weight": 0}]),
                     tok, 32, 10)
    with pytest.raises(DataError, match=r"data\[0\]: unknown key 'wieght'"):
        DataConfig(data=[{"data": "python-docs", "wieght": 1}]).sources()
    with pytest.raises(DataError, match=r"weight=-1"):
        DataConfig(data='[{"data": "python-docs", "weight": -1}]').sources()  # JSON on the command line


def test_more_steps_than_tokens_is_refused_before_training(tmp_path, tok, corpus):
    path, _ = corpus
    cfg = DataConfig(data=str(path))
    n = train_blocks(cfg, tok, 256, None).n
    assert len(train_blocks(cfg, tok, 256, n)) == n
    with pytest.raises(DataError, match=rf"{n + 1:,} blocks of seq_len=256 are needed.*1.00 passes.*max_epochs=1; "
                                        rf"at most {n:,} blocks fit"):
        train_blocks(cfg, tok, 256, n + 1)
    two = train_blocks(DataConfig(data=str(path), max_epochs=2), tok, 256, 2 * n)
    assert two.describe()[str(path)]["epochs"] == 2.0
    # the second epoch is another order of the same blocks
    e0 = [two.locate(i)[2] for i in range(n)]
    e1 = [two.locate(i)[2] for i in range(n, 2 * n)]
    assert sorted(e0) == sorted(e1) == list(range(n)) and e0 != e1


# -- bad prepared folders --------------------------------------------------------------------------------

def test_damaged_prepared_folders_are_named(tmp_path, tok, corpus):
    import shutil

    path, _ = corpus
    good = tmp_path / "good"
    prepare(DataConfig(data=str(path)), tok, good, shard_mb=1, progress=False)

    def damaged(name, fn):
        d = tmp_path / name
        shutil.copytree(good, d)
        fn(d)
        return d

    cases = [
        (lambda d: (d / "train-00001.bin").unlink(), r"shard .*train-00001.bin is missing"),
        (lambda d: (d / "train-00000.bin").write_bytes((d / "train-00000.bin").read_bytes()[:-10]),
         r"train-00000.bin holds .* bytes, the manifest promises .* truncated"),
        (lambda d: (d / "train-00000.idx.npy").write_bytes(b"garbage"), r"index .*train-00000.idx.npy is missing or corrupt"),
        (lambda d: np.save(d / "validation-00000.idx.npy", np.array([0, 5, 3], dtype=np.int64)),
         r"index .*validation-00000.idx.npy is corrupt"),
        (lambda d: (d / "manifest.json").write_text("{not json"), r"manifest.json"),
        (lambda d: (d / "manifest.json").write_text('{"format": "other"}'), r"not a manifest of prepared token shards"),
    ]
    for i, (fn, msg) in enumerate(cases):
        d = damaged(f"bad{i}", fn)
        with pytest.raises(DataError, match=msg):
            load_blocks(DataConfig(data=str(d)), tok, "validation", 16, 2)


def test_source_with_no_text(tmp_path, tok):
    (tmp_path / "e.jsonl").write_text(json.dumps({"text": "  "}) + "\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(DataError, match="holds no non-empty text"):
        prepare(DataConfig(data=str(tmp_path / "e.jsonl")), tok, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


# -- exact resume through the Trainer ----------------------------------------------------------------------

def test_resume_reads_exactly_the_next_batches_without_skipping(tmp_path, tok):
    """A run resumed from checkpoint-3 trains on the token ids of batches 4-6 of the uninterrupted run, and never
    reads a block of batches 1-3 again (the dataset counts its reads)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from minitron_hf.training import CheckpointMixin

    class Recording(CheckpointMixin, Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.batches.append(inputs["input_ids"].clone())
            return super().compute_loss(model, {k: inputs[k] for k in ("input_ids", "labels")}, return_outputs)

    class Counting(Blocks):
        reads: list

        def __getitem__(self, i):
            self.reads.append(int(i))
            return super().__getitem__(i)

    def run(out, max_steps, resume=None):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        base = train_blocks(DataConfig(max_documents=80), tok, 32, 6 * 4)
        ds = Counting(base.sources, 32, base.n, seed=base.seed)
        ds.reads = []
        args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, save_steps=3, save_strategy="steps", report_to=[],
                                 logging_steps=1, use_cpu=True, learning_rate=1e-3, seed=0,
                                 dataloader_num_workers=0)
        t = Recording(model=model, args=args, train_dataset=ds, data_collator=collate_blocks)
        t.batches = []
        t.train(resume_from_checkpoint=resume)
        return t.batches, ds.reads

    full, _ = run(tmp_path / "full", 6)
    assert len(full) == 12
    run(tmp_path / "cut", 3)
    resumed, reads = run(tmp_path / "cut", 6, resume=str(tmp_path / "cut" / "checkpoint-3"))
    assert len(resumed) == 6
    for a, b in zip(resumed, full[6:]):
        assert torch.equal(a, b)
    assert min(reads) == 12  # samples 0..11 (steps 1-3) were not read again


def test_cli_prepare_blend_and_hub_sources_are_not_prepared_on_the_fly(tmp_path, tok, corpus, default_model_dir,
                                                                         capsys):
    from minitron_hf.cli import main

    path, _ = corpus
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"text": t}) + "\n" for _, t in python_docs_documents()[420:470]))
    blend = json.dumps([{"data": str(path), "weight": 3}, {"data": str(other), "weight": 1}])
    assert main(["data", "prepare", "--data", blend, "--tokenizer", str(default_model_dir),
                 "--output", str(tmp_path / "blend")]) == 0
    out = capsys.readouterr().out
    assert "use it with: --data [" in out
    import yaml

    cfg = yaml.safe_load((tmp_path / "blend" / "blend.yaml").read_text())["data"]
    assert [c["data"] for c in cfg] == [str(tmp_path / "blend" / "source-0"), str(tmp_path / "blend" / "source-1")]
    assert [c["weight"] for c in cfg] == [0.75, 0.25]
    ds = train_blocks(DataConfig(data=cfg), tok, 64, 400)
    assert sum(ds.locate(i)[0] == 0 for i in range(400)) == 300
    # bad blend weights and missing output: one line, exit 2, nothing written
    assert main(["data", "prepare", "--data", '[{"data": "x.jsonl", "weight": 0}]', "--output", str(tmp_path / "z")]) == 2
    assert "data[0].weight=0 must be a number > 0" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert main(["data", "prepare", "--data", str(path)]) == 2
    assert "output is required" in capsys.readouterr().err
    # a Hub dataset is never prepared implicitly inside a stage (it would be read whole first)
    with pytest.raises(DataError, match="is a Hub dataset: it is prepared once, ahead.*minitron data prepare"):
        load_blocks(DataConfig(data="someone/big-corpus"), tok, "calibration", 16, 2)
