"""The data module on the real default data and on local files."""

import json

import pytest
import torch

from minitron_hf.data import (DataConfig, DataError, load_blocks, load_documents, pack_documents,
                              python_docs_documents, split_documents)


def test_python_docs_has_prose_and_code():
    docs = python_docs_documents()
    keys = [k for k, _ in docs]
    assert any(k.startswith("pydoc:") for k in keys) and any(k.endswith(".py") for k in keys)
    assert not any("site-packages" in k or k.startswith("test/") for k in keys)
    assert sum(len(t) for _, t in docs) > 1_000_000


def test_splits_disjoint_deterministic_and_seeded():
    docs = load_documents(DataConfig())
    cfg = DataConfig(validation_fraction=0.1, calibration_fraction=0.1)
    a, b = split_documents(docs, cfg), split_documents(docs, cfg)
    assert a == b
    sets = {k: set(v) for k, v in a.items()}
    assert not (sets["train"] & sets["validation"]) and not (sets["train"] & sets["calibration"])
    assert not (sets["validation"] & sets["calibration"])
    assert sum(len(v) for v in a.values()) == len(docs)
    assert 0.05 < len(a["validation"]) / len(docs) < 0.15
    c = split_documents(docs, DataConfig(validation_fraction=0.1, calibration_fraction=0.1, data_seed=1))
    assert set(c["validation"]) != sets["validation"]


def test_packing_shapes_eos_and_early_stop(default_tokenizer):
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    eos = default_tokenizer.eos_token_id
    flat = []
    for t in texts:
        flat += default_tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
    blocks = pack_documents(texts, default_tokenizer, 3)
    assert blocks.shape == (len(flat) // 3, 3)
    assert blocks.flatten().tolist() == flat[: blocks.numel()]
    assert (blocks == eos).sum() >= 2
    calls = []

    class Counting:
        eos_token_id = eos

        def __call__(self, batch, **kw):
            calls.append(len(batch))
            return default_tokenizer(batch, **kw)

    many = ["some words here"] * 1000
    out = pack_documents(many, Counting(), 8, max_blocks=2)
    assert out.shape == (2, 8) and len(calls) == 1  # stopped after the first batch of documents


def test_local_files(tmp_path, default_tokenizer):
    rows = [{"text": f"document number {i} " * 20, "other": i} for i in range(50)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = load_documents(DataConfig(data=str(tmp_path / "d.jsonl")))
    assert len(docs) == 50 and docs[3][1].startswith("document number 3")
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    assert [t for _, t in load_documents(DataConfig(data=str(tmp_path / "d.parquet")))] == [t for _, t in docs]
    txt = tmp_path / "txt"
    txt.mkdir()
    for i in range(3):
        (txt / f"{i}.txt").write_text(f"plain text file {i}")
    assert len(load_documents(DataConfig(data=str(txt)))) == 3
    b = load_blocks(DataConfig(data=str(tmp_path / "d.jsonl"), validation_fraction=0.2), default_tokenizer,
                    "validation", 16, 4)
    assert b.shape == (4, 16) and b.dtype == torch.long


def test_bad_data_inputs(tmp_path, default_tokenizer):
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(DataError, match="text_field='text' is not a column.*body"):
        load_documents(DataConfig(data=str(tmp_path / "d.jsonl")))
    (tmp_path / "d.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_documents(DataConfig(data=str(tmp_path / "d.csv")))
    with pytest.raises(DataError, match="no such file"):
        load_documents(DataConfig(data=str(tmp_path / "missing.jsonl")))
    with pytest.raises(DataError, match="validation_fraction=1.5"):
        split_documents([("a", "b")], DataConfig(validation_fraction=1.5))
    with pytest.raises(DataError, match="must be < 1"):
        split_documents([("a", "b")], DataConfig(validation_fraction=0.6, calibration_fraction=0.5))
    with pytest.raises(DataError, match="split='test'"):
        load_blocks(DataConfig(), default_tokenizer, "test", 16)
    with pytest.raises(DataError, match="only .* blocks of seq_len=4096"):
        load_blocks(DataConfig(), default_tokenizer, "calibration", 4096, max_blocks=10_000)


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="could not be loaded from the Hub.*local path"):
        load_documents(DataConfig(data="someone/not-a-dataset"))
