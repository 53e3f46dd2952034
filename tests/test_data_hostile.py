"""Hostile input to `minitron data prepare` and to prepared folders: every failure is one line naming the file,
leaves nothing that blocks the rerun, and the rerun on the fixed input works."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minitron_hf.cli import main
from minitron_hf.data import DataConfig, DataError, iter_documents, load_blocks, prepare, python_docs_documents, \
    tokenizer_info

pytestmark = pytest.mark.slow  # data preparation end to end (the real tokenizer, python-docs)

from conftest import sigint_default


@pytest.fixture(scope="module")
def tok(default_tokenizer):
    return default_tokenizer


def rows(texts):
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


def docs(n, word="document"):
    return [f"{word} number {i}: " + "some plain words of text " * 4 for i in range(n)]


def cli_prepare(data, out, default_model_dir, *extra):
    return main(["data", "prepare", "--data", str(data), "--output", str(out), "--tokenizer", str(default_model_dir),
                 *extra])


def one_error_line(capsys):
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(err) == 1, err
    return err[0]


# -- 1. a failed first preparation leaves nothing; the rerun on the fixed input works ---------------------------

def _bad_line(d):
    f = d / "c.jsonl"
    f.write_text(rows(docs(2)) + "{not json\n")
    return f, lambda: f.write_text(rows(docs(3))), r"c.jsonl line 3 is not valid JSON"


def _number(d):
    f = d / "c.jsonl"
    f.write_text(rows(docs(2)) + json.dumps({"text": 42}) + "\n")
    return f, lambda: f.write_text(rows(docs(3))), r"text_field='text' of .*c.jsonl line 3 holds int"


def _number_first_line(d):
    f = d / "c.jsonl"
    f.write_text(json.dumps({"text": 42}) + "\n" + rows(docs(2)))
    return f, lambda: f.write_text(rows(docs(3))), r"c.jsonl line 1 holds int"


def _empty(d):
    f = d / "c.jsonl"
    f.write_text("")
    return f, lambda: f.write_text(rows(docs(3))), r"c.jsonl is empty"


def _not_parquet(d):
    f = d / "c.parquet"
    f.write_text(rows(docs(3)))

    def fix():
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": docs(3)}), f)

    return f, fix, r"c.parquet is not a parquet file"


def _blend_missing_second(d):
    (d / "a.jsonl").write_text(rows(docs(3)))
    blend = json.dumps([{"data": str(d / "a.jsonl"), "weight": 1}, {"data": str(d / "b.jsonl"), "weight": 1}])
    return blend, lambda: (d / "b.jsonl").write_text(rows(docs(3, "other"))), r"b.jsonl'?: no such file"


def _blend_bad_second(d):
    """The second source's bad line is found only while reading, after the first source is prepared."""
    (d / "a.jsonl").write_text(rows(docs(3)))
    (d / "b.jsonl").write_text(rows(docs(5, "other")) + "{not json\n")
    blend = json.dumps([{"data": str(d / "a.jsonl"), "weight": 1}, {"data": str(d / "b.jsonl"), "weight": 1}])
    return blend, lambda: (d / "b.jsonl").write_text(rows(docs(6, "other"))), r"b.jsonl line 6 is not valid JSON"


@pytest.mark.parametrize("case", [_bad_line, _number, _number_first_line, _empty, _not_parquet,
                                  _blend_missing_second, _blend_bad_second])
def test_failed_first_prepare_leaves_nothing_and_the_rerun_works(tmp_path, default_model_dir, capsys, case):
    src = tmp_path / "src"
    src.mkdir()
    data, fix, msg = case(src)
    out = tmp_path / "out"
    assert cli_prepare(data, out, default_model_dir) == 2
    import re

    assert re.search(msg, one_error_line(capsys)), msg
    assert not out.exists()  # no prepare.json, no source-N/, no empty folder
    fix()
    assert cli_prepare(data, out, default_model_dir) == 0, capsys.readouterr().err
    assert (out / "manifest.json").is_file() or (out / "blend.yaml").is_file()


def test_a_failure_into_an_existing_empty_folder_keeps_the_folder_only(tmp_path, default_model_dir, capsys):
    f = tmp_path / "c.jsonl"
    f.write_text(rows(docs(2)) + "{not json\n")
    out = tmp_path / "out"
    out.mkdir()
    assert cli_prepare(f, out, default_model_dir) == 2
    assert out.is_dir() and not list(out.iterdir())


def test_bad_line_5000_is_named_and_leaves_nothing(tmp_path, tok):
    f = tmp_path / "big.jsonl"
    f.write_text(rows(docs(4999)) + '{"text": "unterminated\n' + rows(docs(10, "tail")))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"big.jsonl line 5000 is not valid JSON"):
        prepare(DataConfig(data=str(f)), tok, out, shard_mb=1, progress=False)
    assert not out.exists()


def test_json_with_a_bom_is_read(tmp_path, tok, default_model_dir):
    texts = docs(4)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"text": t} for t in texts]).encode())
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + rows(docs(3, "jsonl")).encode())
    assert [t for _, t in iter_documents(DataConfig(data=str(tmp_path / "bom.json")))] == texts
    assert [t for _, t in iter_documents(DataConfig(data=str(tmp_path / "bom.jsonl")))] == docs(3, "jsonl")
    assert cli_prepare(tmp_path / "bom.json", tmp_path / "out", default_model_dir) == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["documents"]["kept"] == 4


# -- 2. directories: upper-case extensions and symlinked subfolders ------------------------------------------------

def test_directory_reads_upper_case_extensions_and_symlinked_folders_once(tmp_path, tok, default_model_dir, caplog):
    corpus, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    corpus.mkdir()
    elsewhere.mkdir()
    (corpus / "a.jsonl").write_text(rows(docs(3, "lower")))
    (corpus / "D.JSONL").write_text(rows(docs(3, "upper")))
    (corpus / "X.TXT").write_text("a text file with an upper-case extension")
    (corpus / "README.md").write_text("not data")
    (elsewhere / "b.jsonl").write_text(rows(docs(3, "linked")))
    (corpus / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(corpus, target_is_directory=True)  # back to the top: read once, no loop
    (corpus / "self").symlink_to(corpus, target_is_directory=True)
    (corpus / "dangling.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    want = set(docs(3, "lower") + docs(3, "upper") + docs(3, "linked") + ["a text file with an upper-case extension"])
    with caplog.at_level(logging.INFO, logger="minitron_hf.data"):
        got = [t for _, t in iter_documents(DataConfig(data=str(corpus)))]
    assert sorted(got) == sorted(want)  # each document once: the loops are not followed twice
    log = caplog.text
    assert "README.md" in log and "dangling.jsonl" in log  # what is left out is named
    assert cli_prepare(corpus, tmp_path / "out", default_model_dir) == 0
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["documents"]["read"] == len(want)


def test_missing_upper_case_path_is_a_missing_file_not_a_hub_id(tmp_path, tok):
    with pytest.raises(DataError, match="no such file or directory"):
        load_blocks(DataConfig(data="corpus/D.JSONL"), tok, "validation", 16, 1)


# -- 3. a prepared folder is input like any other ------------------------------------------------------------------

@pytest.fixture(scope="module")
def good(tmp_path_factory, default_tokenizer):
    d = tmp_path_factory.mktemp("good")
    src = d / "c.jsonl"
    src.write_text(rows([t for _, t in python_docs_documents()[:80]]))
    prepare(DataConfig(data=str(src), validation_fraction=0.2), default_tokenizer, d / "p", progress=False)
    return d / "p"


def _edit_manifest(fn):
    def edit(d):
        m = json.loads((d / "manifest.json").read_text())
        m = fn(m)
        (d / "manifest.json").write_text(json.dumps(m))
    return edit


def _del(m, *path):
    obj = m
    for k in path[:-1]:
        obj = obj[k]
    del obj[path[-1]]
    return m


def _set(m, value, *path):
    obj = m
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value
    return m


def _out_of_vocab(d):
    for f in d.glob("validation-*.bin"):
        f.write_bytes(np.full(f.stat().st_size // 2, 65000, dtype=np.uint16).tobytes())  # same size, other bytes


@pytest.mark.parametrize("damage,msg", [
    (_edit_manifest(lambda m: [m]), r"manifest.json is not a manifest of prepared token shards"),
    (_edit_manifest(lambda m: _set(m, 5, "splits", "validation")), r"manifest.json: splits.validation=5 must be an "
                                                                    r"object"),
    (_edit_manifest(lambda m: _del(m, "splits", "validation", "shards", 0, "file")),
     r"manifest.json: the key splits.validation.shards\[0\].file is missing"),
    (_edit_manifest(lambda m: _set(m, "x", "splits", "train", "shards", 0, "tokens")),
     r"splits.train.shards\[0\].tokens='x' must be an integer"),
    (_edit_manifest(lambda m: _set(m, "../../etc/passwd", "splits", "train", "shards", 0, "file")),
     r"splits.train.shards\[0\].file='../../etc/passwd' must be a file name in the folder"),
    (_edit_manifest(lambda m: _del(m, "tokenizer", "vocab_size")), r"the key tokenizer.vocab_size is missing"),
    (_edit_manifest(lambda m: _set(m, [], "splits", "validation", "shards")),
     r"splits.validation.tokens=\d+ is not the sum of its shards' tokens"),
    (_out_of_vocab, r"shard .*validation-00000.bin holds token id 65000 .*outside the vocabulary of 49,152"),
], ids=["list", "split-number", "missing-file-key", "tokens-string", "path-escape", "no-vocab", "sum", "out-of-vocab"])
def test_damaged_prepared_folder_is_a_data_error_naming_it(tmp_path, tok, good, damage, msg):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(good, d)
    damage(d)
    with pytest.raises(DataError, match=msg):
        load_blocks(DataConfig(data=str(d)), tok, "validation", 16, 2)


def test_prepare_into_a_folder_with_a_list_manifest_is_refused_by_name(tmp_path, tok, default_model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("[]")
    src = tmp_path / "c.jsonl"
    src.write_text(rows(docs(3)))
    assert cli_prepare(src, out, default_model_dir) == 2
    assert "manifest.json that is not a JSON object" in one_error_line(capsys)
    assert cli_prepare(src, out, default_model_dir, "--overwrite") == 0


# -- 4. Ctrl-C with worker processes -------------------------------------------------------------------------------

@pytest.mark.multiprocess
def test_ctrl_c_with_workers_is_one_line_exit_130_and_resumes(tmp_path, default_model_dir):
    texts = [t for _, t in python_docs_documents()]
    src = tmp_path / "big.jsonl"
    with open(src, "w") as fh:
        size, rep = 0, 0
        while size < 6_000_000:
            for t in texts:
                line = json.dumps({"text": f"{rep}\n{t}"}) + "\n"
                fh.write(line)
                size += len(line)
                if size >= 6_000_000:
                    break
            rep += 1
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "minitron_hf.cli", "data", "prepare", "--data", str(src), "--output", str(out),
           "--tokenizer", str(default_model_dir), "--shard-mb", "1", "--num-proc", "2"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a terminal's Ctrl-C signals the whole foreground process group: the parent and its pool workers
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=sigint_default)
    t0 = time.time()
    while not (out / "chunk-00000.json").exists() and proc.poll() is None and time.time() - t0 < 180:
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if (out / "manifest.json").exists():
        pytest.skip("the preparation finished before it could be interrupted")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted" in err
    assert (out / "chunk-00000.json").exists()  # finished chunks are kept ...
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming the preparation" in r.stderr  # ... and the rerun resumes there


# -- 5. full disk --------------------------------------------------------------------------------------------------

def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, default_model_dir, monkeypatch, capsys):
    import minitron_hf.data.chunks as chunks

    def full(fh, tokens):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunks, "_write_tokens", full)
    src = tmp_path / "c.jsonl"
    src.write_text(rows(docs(50)))
    out = tmp_path / "out"
    assert cli_prepare(src, out, default_model_dir) == 2
    assert "no space left on the device while writing the prepared data" in one_error_line(capsys)
    assert not out.exists()
    monkeypatch.undo()
    assert cli_prepare(src, out, default_model_dir) == 0


def test_full_disk_after_a_finished_chunk_of_a_resumed_run_keeps_it(tmp_path, tok, monkeypatch):
    """Only a first preparation is undone: a resumed one keeps its finished chunks (the rerun resumes there)."""
    import minitron_hf.data.chunks as chunks
    from minitron_hf.outputs import OutputError

    src = tmp_path / "c.jsonl"
    src.write_text(rows([t for _, t in python_docs_documents()[:300]]))
    out = tmp_path / "out"
    cfg = DataConfig(data=str(src))
    real, calls = chunks._write_tokens, []

    def interrupted_after_chunk_0(fh, tokens):
        if (out / "chunk-00000.json").exists():
            raise KeyboardInterrupt
        real(fh, tokens)

    monkeypatch.setattr(chunks, "_write_tokens", interrupted_after_chunk_0)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, tok, out, shard_mb=1, progress=False)
    assert (out / "chunk-00000.json").exists()

    def full(fh, tokens):
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(chunks, "_write_tokens", full)
    with pytest.raises(OutputError, match="no space left.*finished chunks are kept"):
        prepare(cfg, tok, out, shard_mb=1, progress=False)
    assert calls and (out / "chunk-00000.json").exists() and (out / "prepare.json").exists()
    monkeypatch.undo()
    m = prepare(cfg, tok, out, shard_mb=1, progress=False)
    assert m["chunks"] >= 2


# -- 6. the prepared-data cache is keyed by content ----------------------------------------------------------------

def test_cache_key_sees_a_rewrite_with_the_same_size_and_mtime(tmp_path, tok, monkeypatch):
    from minitron_hf.data import cache_folder, open_source

    monkeypatch.setenv("MINITRON_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "c.jsonl"
    src.write_text(rows(docs(40, "alpha")))
    st = src.stat()
    cfg = DataConfig(data=str(src))
    info = tokenizer_info(tok)
    before = cache_folder(cfg, info)
    open_source(cfg, tok, info)
    src.write_text(rows(docs(40, "bravo")))  # same length: "alpha" and "bravo" have 5 letters
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    after = cache_folder(cfg, info)
    assert after != before
    p = open_source(cfg, tok, info)
    assert p.path == after
    stream = p["train"]
    text = tok.decode(stream.read(0, stream.n_tokens).tolist())
    assert "bravo" in text and "alpha" not in text  # evaluated on the new tokens
    os.utime(src)  # touched, not changed: the same content keeps its key (no needless preparation)
    assert cache_folder(cfg, info) == after


def test_large_sources_are_keyed_by_size_mtime_and_sampled_bytes(tmp_path, monkeypatch):
    import minitron_hf.data.local as local

    monkeypatch.setattr(local, "FULL_HASH_BYTES", 2**20)  # as if the source were larger than 256 MiB
    f = tmp_path / "big.txt"
    data = bytearray(b"x" * (8 * 2**20))
    f.write_bytes(data)
    st = f.stat()
    base = local.files_fingerprint([f])

    def rewritten(offset):
        b = bytearray(data)
        b[offset] = ord("y")
        f.write_bytes(b)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        return local.files_fingerprint([f])

    assert rewritten(10) != base  # first MiB
    assert rewritten(len(data) - 10) != base  # last MiB
    assert rewritten(local.EDGE_BYTES + 5) != base  # the first sampled chunk
    span = len(data) - 2 * local.EDGE_BYTES - local.SAMPLE_BYTES
    between = local.EDGE_BYTES + span * 5 // (local.SAMPLES - 1) + local.SAMPLE_BYTES + 1000
    assert rewritten(between) == base  # between samples, same size and mtime: documented as not seen
    f.write_bytes(data)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert local.files_fingerprint([f]) != base  # the modification time counts for large sources
