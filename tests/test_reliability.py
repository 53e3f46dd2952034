"""Nothing the user has is lost, and bad input gets one clear line before any work (issue 16).

Each test reproduces a case that destroyed data, crashed with a traceback or left debris before the fix."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from minitron_hf.cli import main
from minitron_hf.config import ConfigError, check_value, load_yaml
from minitron_hf.errors import EXIT_BUG, EXIT_USER_ERROR, MinitronError
from minitron_hf.outputs import OutputError, check_output, write_text_atomically

from conftest import save_with_tokenizer, tiny_model


@pytest.fixture
def model_dir(tmp_path, default_model_dir):
    """runs/x/final: a tiny Llama checkpoint inside a run folder that also holds the user's other files."""
    run = tmp_path / "runs" / "x"
    d = save_with_tokenizer(tiny_model("llama", vocab_size=49152), run / "final", default_model_dir)
    (run / "distill.json").write_text("{}")
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "model.safetensors").write_bytes(b"kept")
    return d


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))}


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


# ---------------------------------------------------------------------------------------- data loss (1-3)

def test_publish_dry_run_never_deletes(model_dir, tmp_path, capsys):
    run = model_dir.parent
    before = _tree(run)
    # 1a. DIR = the run folder holding the model: refused, nothing touched, exit 2
    code, err = _cli(capsys, "publish", model_dir, "--repo-id", "me/x", "--dry-run", run)
    assert code == EXIT_USER_ERROR and "error:" in err and "Traceback" not in err
    assert _tree(run) == before
    # ... and with --overwrite too: a folder that contains the source is never replaced
    code, err = _cli(capsys, "publish", model_dir, "--repo-id", "me/x", "--dry-run", run, "--overwrite")
    assert code == EXIT_USER_ERROR and _tree(run) == before
    # 1b. a non-empty DIR elsewhere: refused without --overwrite, its file kept
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    code, err = _cli(capsys, "publish", model_dir, "--repo-id", "me/x", "--dry-run", other)
    assert code == EXIT_USER_ERROR and "--overwrite" in err and (other / "mine.txt").read_text() == "keep me"
    # an empty DIR is fine; --overwrite replaces a non-empty one
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(capsys, "publish", model_dir, "--repo-id", "me/x", "--dry-run", empty)[0] == 0
    assert (empty / "README.md").exists() and (empty / "model.safetensors").exists()
    assert _cli(capsys, "publish", model_dir, "--repo-id", "me/x", "--dry-run", other, "--overwrite")[0] == 0
    assert (other / "README.md").exists() and _tree(run) == before


def test_overwrite_never_deletes_a_parent_of_the_source(model_dir, tmp_path, capsys):
    run = model_dir.parent
    before = _tree(run)
    for argv in (["prune", "--model", model_dir, "--output", run, "--overwrite", "--target", "hidden_size=36", "--seq-len", "32"],
                 ["prune", "--model", model_dir, "--output", run.parent, "--overwrite", "--target", "hidden_size=36", "--seq-len", "32"],
                 ["prune", "--model", model_dir, "--output", model_dir / "sub", "--target", "hidden_size=36", "--seq-len", "32"],
                 ["export", "fp8", model_dir, "--output", run, "--overwrite"],
                 ["export", "fp8", model_dir, "--output", run.parent, "--overwrite"]):
        code, err = _cli(capsys, *argv)
        assert code == EXIT_USER_ERROR, (argv, err)
        assert "Traceback" not in err and ("contains the input" in err or "inside the input" in err), err
        assert _tree(run) == before


def test_check_output_cases(tmp_path, monkeypatch):
    src = tmp_path / "a" / "model"
    src.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    for out, match in ((".", "current directory"), (str(tmp_path), "current directory"), ("/", "root"),
                       (str(src), "contains the input"), (str(src / "x"), "inside the input"),
                       ("/proc/minitron-test/out", "cannot write")):
        with pytest.raises(OutputError, match=match):
            check_output(out, sources=[src], overwrite=True)
    with pytest.raises(OutputError, match="GiB needed"):
        check_output(tmp_path / "new", need_bytes=2**62)
    assert check_output(tmp_path / "new", sources=[src]) == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # a check writes nothing


# ------------------------------------------------------------------------------------------ minitron run (2)

def _run_config(teacher, out, **over):
    cfg = {"output_dir": str(out), "teacher": str(teacher), "seq_len": 32, "eval_samples": 2, "report_to": "none",
           "prune": {"target": {"hidden_size": 36, "intermediate_size": 64}, "calib_samples": 2, "batch_size": 2},
           "evaluate": {"max_new_tokens": 0}}
    cfg.update(over)
    return cfg


@pytest.mark.slow
def test_run_refuses_a_folder_that_is_not_a_run_and_keeps_foreign_files(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "distill").mkdir(parents=True)
    (out / "distill" / "notes.txt").write_text("notes")
    (out / "prune").mkdir()
    (out / "prune" / "important.txt").write_text("important")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_run_config(model_dir, out)))
    # a stage folder no run wrote is refused, naming it, with or without --overwrite (issue 35)
    for extra in ((), ("--overwrite",)):
        code, err = _cli(capsys, "run", path, *extra)
        assert code == EXIT_USER_ERROR and "prune/" in err and "move" in err, err
        assert sorted(p.name for p in out.rglob("*")) == ["distill", "important.txt", "notes.txt", "prune"]
    (out / "prune" / "important.txt").rename(out / "important.txt")
    (out / "prune").rmdir()
    code, err = _cli(capsys, "run", path)
    assert code == EXIT_USER_ERROR and "not a minitron run" in err and "--overwrite" in err
    # --overwrite: the run happens there, and the files it did not write survive it and a rerun of the stage
    assert _cli(capsys, "run", path, "--overwrite")[0] == 0
    assert (out / "prune" / "model" / "config.json").exists() and (out / "report.md").exists()
    (out / "prune" / "important.txt").write_text("important")
    assert (out / "distill" / "notes.txt").read_text() == "notes"
    assert (out / "important.txt").read_text() == "important"
    (out / "prune" / "later.txt").write_text("added after the run")
    assert _cli(capsys, "run", path, "--from", "prune")[0] == 0  # now a run folder: no --overwrite needed
    assert (out / "prune" / "important.txt").exists() and (out / "prune" / "later.txt").exists()
    # a run of another teacher in the same folder is refused
    other = shutil.copytree(model_dir, tmp_path / "other-teacher")
    path.write_text(yaml.safe_dump(_run_config(other, out)))
    code, err = _cli(capsys, "run", path)
    assert code == EXIT_USER_ERROR and "holds a run of another teacher" in err, err


@pytest.mark.slow
def test_run_corrupt_done_json_reruns_that_stage_and_a_failed_stage_leaves_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    path = tmp_path / "run.yaml"
    # a stage that fails on its first run (data with no usable text) leaves no importance/config.json behind
    bad_data = tmp_path / "data"
    bad_data.mkdir()
    (bad_data / "a.txt").write_bytes(os.urandom(4096))
    path.write_text(yaml.safe_dump(_run_config(model_dir, out, data=str(bad_data))))
    code, err = _cli(capsys, "run", path)
    assert code == EXIT_USER_ERROR and "a.txt" in err and "not UTF-8" in err
    assert not (out / "importance").exists()
    path.write_text(yaml.safe_dump(_run_config(model_dir, out)))
    assert _cli(capsys, "run", path)[0] == 0
    (out / "prune" / "done.json").write_text('{"stage": "pru')  # a damaged marker
    code, err = _cli(capsys, "run", path)
    assert code == 0
    done = json.loads((out / "prune" / "done.json").read_text())
    assert done["stage"] == "prune"


# ------------------------------------------------------------------------------------- pre-flight (6, 7, 10)

@pytest.mark.parametrize("section,over,match", [
    ("distill", {"max_steps": [2]}, "max_steps=\\[2\\] must be an integer"),
    ("distill", {"lr_scheduler_kwargs": [1, 2]}, "lr_scheduler_kwargs=\\[1, 2\\] must be a mapping"),
    ("prune", {"batch_size": 4.5}, "batch_size=4.5 must be an integer"),
    ("prune", {"target": "hidden_size=32"}, "target='hidden_size=32' must be a mapping"),
    ("distill", {"max_steps": -5}, "max_steps"),
    ("distill", {"max_steps": 0}, "max_steps"),
])
def test_run_config_types_are_checked_before_any_work(model_dir, tmp_path, section, over, match):
    from minitron_hf.pipeline import load_run

    cfg = _run_config(model_dir, tmp_path / "out", distill={"max_steps": 2})
    cfg[section] = {**cfg.get(section, {}), **over}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(MinitronError, match=match):
        load_run(path)
    assert not (tmp_path / "out").exists()


def test_broken_yaml_names_the_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("teacher: x\nprune: {target: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*invalid YAML at line \d+"):
        load_yaml(p, [])


def test_check_value_against_annotations():
    assert check_value("x", "1e-4", float) == 1e-4 and check_value("n", "3", int) == 3
    assert check_value("n", 4.0, int) == 4 and check_value("s", 5, str) == "5"
    assert check_value("o", None, int | None) is None
    assert check_value("l", [1, "2"], list[int]) == [1, 2]
    for name, value, tp in (("n", True, int), ("n", "abc", int), ("x", [1], float), ("s", {"a": 1}, str),
                            ("b", "maybe", bool), ("l", 3, list[int]), ("d", [1], dict), ("o", None, int)):
        with pytest.raises(ConfigError, match=f"{name}="):
            check_value(name, value, tp)


def test_output_dot_and_unwritable_output_fail_before_calibration(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for out, match in ((".", "current directory"), ("/proc/minitron-x", "cannot write")):
        code, err = _cli(capsys, "prune", "--model", model_dir, "--output", out, "--target", "hidden_size=36", "--seq-len", "32",
                         "--overwrite")
        assert code == EXIT_USER_ERROR and match in err, err


# ------------------------------------------------------------------------------------- corrupt inputs (8, 9)

def _copy(model_dir, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(model_dir, d)
    return d


def test_truncated_weights_and_garbage_config_are_named(model_dir, tmp_path, capsys):
    trunc = _copy(model_dir, tmp_path, "trunc")
    w = trunc / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    garbage = _copy(model_dir, tmp_path, "garbage")
    (garbage / "config.json").write_text("\x00\x01 not json")
    junk = _copy(model_dir, tmp_path, "junk")
    (junk / "model.safetensors").write_bytes(os.urandom(1000))
    for d, name in ((trunc, "model.safetensors"), (garbage, "config.json"), (junk, "model.safetensors")):
        for argv in (["prune", "--model", d, "--output", tmp_path / "o", "--target", "hidden_size=36", "--seq-len", "32"],
                     ["distill", "--student", d, "--teacher", model_dir, "--output-dir", tmp_path / "o2"],
                     ["export", "fp8", d, "--output", tmp_path / "o3"],
                     ["publish", d, "--repo-id", "me/x", "--dry-run", tmp_path / "o4"],
                     ["eval", "humaneval", d, "--limit", "1", "--samples", "1"]):
            code, err = _cli(capsys, *argv)
            assert code == EXIT_USER_ERROR, (argv, err)
            assert name in err and "Traceback" not in err, (argv, err)
        assert not any((tmp_path / o).exists() for o in ("o", "o2", "o3", "o4"))


def test_binary_txt_data_is_refused_with_its_name(tmp_path):
    from minitron_hf.data import DataConfig, DataError, load_documents

    d = tmp_path / "data"
    d.mkdir()
    (d / "good.txt").write_text("def f():\n    return 1\n")
    (d / "noise.txt").write_bytes(os.urandom(2048))
    with pytest.raises(DataError, match="noise.txt is not UTF-8"):
        load_documents(DataConfig(data=str(d)))
    (d / "noise.txt").write_text("\ufffd" * 500 + "abc")
    with pytest.raises(DataError, match="noise.txt is .*replacement"):
        load_documents(DataConfig(data=str(d)))


def test_bad_evaluation_json_names_the_file(model_dir, tmp_path, capsys):
    ev = tmp_path / "ev.json"
    ev.write_text("{not json")
    code, err = _cli(capsys, "publish", model_dir, "--repo-id", "me/x", "--dry-run", tmp_path / "o",
                     "--evaluation", ev)
    assert code == EXIT_USER_ERROR and "ev.json" in err and "not valid JSON" in err
    code, err = _cli(capsys, "publish", model_dir, "--repo-id", "me/x", "--dry-run", tmp_path / "o",
                     "--evaluation", tmp_path / "missing.json")
    assert code == EXIT_USER_ERROR and "missing.json" in err and "no such file" in err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ left behind (11)

def test_full_disk_leaves_the_old_file_not_a_truncated_one(tmp_path, monkeypatch):
    from minitron_hf.eval import write_results

    out = tmp_path / "res"
    write_results(out, {"a": 1}, "| a |")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="no space left"):
        write_results(out, {"a": 2}, "| a |")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads((out / "results.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]  # no temp files
    write_text_atomically(out / "x.txt", "y")
    assert (out / "x.txt").read_text() == "y"


# ------------------------------------------------------------------------------------------------- CLI (12)

def test_cli_user_errors_are_one_line_and_bugs_exit_3(monkeypatch, capsys):
    import minitron_hf.cli as cli

    def boom(ns):
        raise KeyError("internal")

    parser = cli.make_parser

    def patched():
        p = parser()
        p._subparsers._group_actions[0].choices["generate"].set_defaults(func=boom)
        return p

    monkeypatch.setattr(cli, "make_parser", patched)
    code = cli.main(["generate", "x"])
    err = capsys.readouterr().err
    assert code == EXIT_BUG and "internal error: KeyError" in err and "-v" in err and "Traceback" not in err
    code = cli.main(["-v", "generate", "x"])
    assert code == EXIT_BUG and "Traceback" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_cli_subprocess_missing_model_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minitron_hf.cli", "prune", "--model", str(tmp_path / "nope"),
                        "--output", str(tmp_path / "o"), "--target", "hidden_size=36", "--seq-len", "32"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_USER_ERROR and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("minitron prune: error: ")


@pytest.mark.slow
def test_run_nan_names_the_run_command_and_a_finite_checkpoint(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    path = tmp_path / "run.yaml"
    cfg = _run_config(model_dir, out, distill={"max_steps": 6, "per_device_train_batch_size": 2, "learning_rate": 1e30,
                                               "save_strategy": "steps", "save_steps": 1, "disable_tqdm": True})
    path.write_text(yaml.safe_dump(cfg))
    code, err = _cli(capsys, "run", path)
    assert code == EXIT_USER_ERROR and "Traceback" not in err, err
    assert f"rerun `minitron run {path}`" in err and "--resume-from-checkpoint" not in err, err
    assert "runs stage distill again from its start" in err
    from safetensors.torch import load_file

    for ckpt in (out / "distill").glob("checkpoint-*"):  # every checkpoint written holds finite weights
        assert all(t.isfinite().all() for t in load_file(str(ckpt / "model.safetensors")).values())
    # with a learning rate of 1e30 no step after the first is sane: no checkpoint is recommended, the finite ones
    # the divergence started from are set aside (renamed, not deleted)
    assert "no good checkpoint" in err and "renamed diverged-checkpoint-" in err, err
    assert list((out / "distill").glob("diverged-checkpoint-*"))


def test_trainers_require_an_output_dir_and_never_write_trainer_output(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv in (["distill", "--student", model_dir, "--teacher", model_dir, "--max-steps", "1"],
                 ["correct-teacher", "--model", model_dir, "--max-steps", "1"],
                 ["align", "sft", "--model", model_dir, "--max-steps", "1"]):
        code, err = _cli(capsys, *argv)
        assert code == EXIT_USER_ERROR and "output_dir is required" in err, (argv, err)
    assert not (tmp_path / "trainer_output").exists()
    # a final model that would replace its own source is refused, whatever --overwrite says
    code, err = _cli(capsys, "distill", "--student", model_dir, "--teacher", model_dir, "--output-dir",
                     model_dir.parent, "--overwrite", "--max-steps", "1")
    assert code == EXIT_USER_ERROR and "is or contains the input" in err, err
    assert (model_dir / "model.safetensors").exists()
