"""Nothing lost, round 2 (issue 35): inputs inside outputs, two commands at once, links and odd names, caches.

Each test is a class of input a hostile probe found, not one case: every input path of every kind is protected, a
second command on a folder in use is refused by real concurrent processes, and a cache location is checked once,
naming its variable."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minitron_hf.cli import main
from minitron_hf.errors import EXIT_USER_ERROR
from minitron_hf.outputs import OutputError, cache_dir, check_output, command_scope, input_paths

from conftest import save_with_tokenizer, sigint_default, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path, default_model_dir):
    return save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "tiny", default_model_dir)


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))}


def _corpus(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / "data.jsonl"
    f.write_text("".join(json.dumps({"text": f"document {i}: " + "the quick brown fox jumps " * 20}) + "\n"
                         for i in range(40)))
    (d / "notes.md").write_text("the user's other file")
    return f


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------- inputs inside outputs

def test_input_paths_finds_every_kind_of_input(tmp_path):
    from minitron_hf.data import DataConfig
    from minitron_hf.pruning.config import PruneConfig

    a, b, scores = tmp_path / "a.jsonl", tmp_path / "b", tmp_path / "scores"
    a.write_text("{}\n")
    b.mkdir()
    scores.mkdir()
    blend = json.dumps([{"data": str(a), "weight": 1}, {"data": str(b), "weight": 2}])
    found = input_paths(DataConfig(data=blend), PruneConfig(model="smollm2-135m", scores=str(scores),
                                                            output=str(tmp_path)))
    assert sorted(map(str, found)) == sorted(map(str, [a, b, scores]))  # not the output, not the alias
    assert input_paths({"data": [{"data": str(a)}], "output_dir": str(b)}) == [a]


@pytest.mark.parametrize("command", ["prune", "importance"])
def test_data_inside_the_output_is_never_deleted(tiny, tmp_path, capsys, command):
    corpus = tmp_path / "corpus"
    data = _corpus(corpus)
    before = _tree(corpus)
    extra = ["--target", "intermediate_size=32"] if command == "prune" else []
    code, err = _cli(capsys, command, "--model", tiny, "--data", data, "--output", corpus, "--overwrite",
                     "--seq-len", "16", "--calib-samples", "2", *extra)
    assert code == EXIT_USER_ERROR and "is or contains the input" in err and str(data) in err
    assert _tree(corpus) == before


def test_fp8_export_protects_its_calibration_data(tiny, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    data = _corpus(corpus)
    before = _tree(corpus)
    code, err = _cli(capsys, "export", "fp8", tiny, "--data", data, "--output", corpus, "--overwrite")
    assert code == EXIT_USER_ERROR and "is or contains the input" in err
    assert _tree(corpus) == before


def test_distill_never_overwrites_the_student_it_trains_from(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    student = out / "checkpoint-1"
    save_with_tokenizer(tiny_model("llama", vocab_size=49152), student, tiny)
    before = _tree(out)
    for extra in (["--overwrite"], []):
        code, err = _cli(capsys, "distill", "--student", student, "--teacher", tiny, "--output-dir", out,
                         "--max-steps", "1", "--seq-len", "16", *extra)
        assert code == EXIT_USER_ERROR, err
        assert "lies inside" in err and "checkpoint-1" in err
        assert _tree(out) == before


def test_eval_results_never_replace_an_input(tiny, tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    problems = out / "problems.jsonl"
    problems.write_text('{"task_id": "x"}\n')
    from minitron_hf.eval import check_results_folder

    with pytest.raises(OutputError, match="holds the input problems.jsonl"):
        check_results_folder(out, [tiny], {"problems": str(problems)})
    check_results_folder(out, [tiny], {"problems": str(tmp_path / "elsewhere.jsonl")})  # other files may be there


# ---------------------------------------------------------------------------------------- links and odd names

def test_links_and_long_names_are_refused_before_work(tmp_path, capsys, tiny):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    link = tmp_path / "link"
    link.symlink_to(user)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for out, why in ((link, "is a symbolic link to"), (dangling, "which does not exist"),
                     (tmp_path / ("n" * 250), "choose a shorter name")):
        code, err = _cli(capsys, "prune", "--model", tiny, "--output", out, "--overwrite", "--target",
                         "intermediate_size=32", "--seq-len", "16")
        assert code == EXIT_USER_ERROR and why in err, err
    assert _tree(user) == {"thesis.tex": b"years of work"} and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["user", "link", "dangling", "tiny"])  # no .old-*
    # a run folder is only added to: a link to a folder is followed there
    assert check_output(link, "output_dir", overwrite=True, replaced=False) == link


# ---------------------------------------------------------------------------------------- two commands at once

HOLD = textwrap.dedent("""
    import sys, time
    from minitron_hf.outputs import check_output, command_scope
    with command_scope():
        check_output(sys.argv[1], "output", overwrite=True)
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _holder(out: Path, seconds: float, env=None):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(seconds)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})}, cwd=ROOT, preexec_fn=sigint_default)
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest.mark.multiprocess
def test_a_second_command_on_a_folder_in_use_is_refused(tiny, tmp_path):
    out = tmp_path / "out"
    holder = _holder(out, 60)
    try:
        argv = [sys.executable, "-m", "minitron_hf.cli", "prune", "--model", str(tiny), "--output", str(out),
                "--target", "intermediate_size=32", "--seq-len", "16"]
        r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == EXIT_USER_ERROR, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert f"PID {holder.pid}" in line and "started" in line and "another minitron command" in line
        assert not out.exists()  # the refused command wrote nothing
        # a folder inside the one in use is refused too
        inner = subprocess.run([*argv[:-6], "--output", str(out / "sub"), *argv[-4:]], capture_output=True,
                               text=True, cwd=ROOT, timeout=300)
        assert inner.returncode == EXIT_USER_ERROR and f"lies inside {out.resolve()}" in inner.stderr
        # the ranks of one launch, and the holder's children, share its lock
        child = _holder(out, 0, env={"MINITRON_LOCK_OWNER": str(holder.pid)})
        assert child.wait(60) == 0
        rank = _holder(out, 0, env={"RANK": "1"})
        assert rank.wait(60) == 0
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file is left, and the next command takes it over with a warning
    locks = [p for p in (cache_dir() / "locks").iterdir() if _holder_of(p).get("output") == str(out.resolve())]
    assert len(locks) == 1 and _holder_of(locks[0])["pid"] == holder.pid
    lock = locks[0]
    r = subprocess.run([sys.executable, "-c", HOLD, str(out), "0"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0 and "took over the lock" in r.stderr and f"PID {holder.pid}" in r.stderr
    assert not lock.exists()  # released on exit
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # nothing was ever written beside the output


def _holder_of(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.multiprocess
def test_the_lock_is_released_on_error_and_interrupt(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError):
        with command_scope():
            check_output(out, "output")
            assert not (tmp_path / "a").exists()  # locking writes nothing beside or inside the output
            assert _mine(out)
            raise RuntimeError("boom")
    assert not _mine(out)
    p = _holder(out, 60)
    p.send_signal(signal.SIGINT)
    p.wait(60)
    with command_scope():  # free again
        check_output(out, "output")
    with command_scope():  # and nested commands in one process re-enter their own lock
        check_output(out, "output")
        check_output(out, "output", overwrite=True)
        check_output(out / "inner", "output")


def _mine(out: Path) -> list:
    return [p for p in (cache_dir() / "locks").glob("*") if _holder_of(p).get("output") == str(out.resolve())]


def test_outside_a_command_nothing_is_locked(tmp_path):
    out = tmp_path / "out"
    check_output(out, "output")
    assert not _mine(out)


# ---------------------------------------------------------------------------------------- caches and aliases

@pytest.mark.parametrize("value,why", [("", "set but empty"), ("FILE", "is a file, not a folder"),
                                       ("FILE/sub", "is a file, not a folder")])
def test_a_bad_cache_location_names_the_variable(tmp_path, monkeypatch, value, why):
    f = tmp_path / "afile"
    f.write_text("x")
    monkeypatch.setenv("MINITRON_CACHE", value.replace("FILE", str(f)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match=f"MINITRON_CACHE.*{why}"):
        cache_dir()
    assert sorted(os.listdir(tmp_path)) == ["afile"]  # nothing written into the current folder


def test_a_read_only_cache_is_refused_only_when_it_must_be_filled(monkeypatch):
    from minitron_hf.outputs import build_once

    monkeypatch.setenv("MINITRON_CACHE", "/proc/minitron-cache")  # a read-only mount
    target = cache_dir() / "entry"
    with pytest.raises(OutputError, match="MINITRON_CACHE"):
        build_once(target, lambda: False, lambda: None)
    build_once(target, lambda: True, lambda: pytest.fail("built"))  # already there: read-only is fine


def test_a_local_folder_named_like_an_alias_wins(tmp_path, monkeypatch, default_model_dir, caplog):
    from minitron_hf.loading import resolve_model

    local = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "smollm2-135m", default_model_dir)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("smollm2-135m").resolve() == local.resolve()
    assert "not the embedded model" in caplog.text
    (tmp_path / "gemma3-270m").mkdir()
    with pytest.raises(Exception, match="no config.json.*wins over the embedded model"):
        resolve_model("gemma3-270m")


def test_data_prepare_never_writes_over_a_source_of_its_blend(tmp_path, capsys, default_model_dir):
    corpus = tmp_path / "corpus"
    a = _corpus(corpus)
    b = tmp_path / "b.jsonl"
    b.write_text(a.read_text())
    before = _tree(corpus)
    blend = json.dumps([{"data": str(b), "weight": 1}, {"data": str(a), "weight": 1}])
    for data in (str(a), blend):
        code, err = _cli(capsys, "data", "prepare", "--data", data, "--output", corpus, "--overwrite",
                         "--tokenizer", default_model_dir)
        assert code == EXIT_USER_ERROR and "is or contains the input" in err, err
        assert _tree(corpus) == before


def test_a_local_folder_named_like_the_embedded_data_wins(tmp_path, monkeypatch, caplog):
    from minitron_hf.data import DataConfig, iter_documents

    local = tmp_path / "python-docs"
    local.mkdir()
    (local / "a.txt").write_text("a local document that is not the Python docs")
    monkeypatch.chdir(tmp_path)
    docs = [t for _, t in iter_documents(DataConfig(data="python-docs"))]
    assert docs == ["a local document that is not the Python docs"]
    assert "not the embedded data" in caplog.text


def test_the_config_file_is_an_input_too(tiny, tmp_path, capsys):
    import yaml

    out = tmp_path / "out"
    out.mkdir()
    cfg = out / "p.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny), "output": str(out), "overwrite": True, "seq_len": 16,
                                   "target": {"intermediate_size": 32}}))
    before = _tree(out)
    code, err = _cli(capsys, "prune", "--config", cfg)
    assert code == EXIT_USER_ERROR and "is or contains the input" in err and "p.yaml" in err, err
    assert _tree(out) == before


def test_publish_dry_run_keeps_the_evaluation_file_it_reads(tiny, tmp_path, capsys):
    up = tmp_path / "up"
    up.mkdir()
    ev = up / "ev.json"
    ev.write_text(json.dumps({"tiny": {"acc": 0.5}}))
    before = _tree(up)
    code, err = _cli(capsys, "publish", tiny, "--repo-id", "me/x", "--dry-run", up, "--overwrite", "--evaluation", ev)
    assert code == EXIT_USER_ERROR and "ev.json" in err, err
    assert _tree(up) == before


def test_a_shard_index_is_parsed_in_one_place_and_checked(tmp_path):
    from minitron_hf.model_files import index_shards, read_weight_map
    from minitron_hf.outputs import CorruptFileError
    from minitron_hf.pruning.layerwise import SequentialError  # noqa: F401  (its reader uses the same parser)

    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}}))
    assert index_shards(index) == ["s1.safetensors", "s2.safetensors"] and read_weight_map(index)["a"] == "s2.safetensors"
    for bad, why in (([1, 2], "not a shard index"), ({"weight_map": {"a": 3}}, "not a shard index"),
                     ({"weight_map": {"a": "../../etc/passwd"}}, "outside its folder"),
                     ({"weight_map": {"a": "/abs/x.safetensors"}}, "outside its folder")):
        index.write_text(json.dumps(bad))
        with pytest.raises(CorruptFileError, match=why):
            index_shards(index)
