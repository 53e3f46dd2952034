"""`minitron run --overwrite` replaces what a run wrote, never what it did not write (issue 35).

A stage folder (``out/prune/``, ``out/data/``, ...) is the run's when its records say a run of that stage wrote it
(the ``config.json`` the runner writes when the stage starts, the ``done.json`` when it ends); any other non-empty
one is refused before any work, naming it. Files the user adds to a run's stage folder, or next to the stage
folders, survive reruns of the stage."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoConfig

from minitron_hf.cli import main
from minitron_hf.errors import EXIT_USER_ERROR
from minitron_hf.pipeline import load_run, read_done, run_pipeline
from minitron_hf.pipeline.base import config_dump

from conftest import run_config, write_yaml

pytestmark = pytest.mark.slow  # `minitron run` end to end


def _fast(teacher, out, **over):
    """A run of data, importance (nothing to score), prune and evaluate on the tiny teacher: seconds."""
    cfg = run_config(teacher, out, distill=None, export=None, eval_samples=2, evaluate={"max_new_tokens": 0},
                     prune={"target": {"intermediate_size": 64}, "importance": "random"})
    cfg.update(over)
    return cfg


def _hashes(d: Path) -> dict:
    """{relative path: sha256 of the bytes (None for a folder)} of everything under ``d``."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(d.rglob("*"))}


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _user_prune(out: Path, teacher: Path) -> None:
    """A prune/ the user made by hand: a model of their own with a README."""
    d = out / "prune"
    d.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        (d / f).write_bytes((teacher / f).read_bytes())
    (d / "README.md").write_text("# my hand-pruned model\n")


def _user_data(out: Path, teacher: Path) -> None:
    """A data/ the user made by hand: their selection of examples and its settings."""
    d = out / "data"
    d.mkdir(parents=True)
    (d / "keep.jsonl").write_text('{"text": "def f():\\n    return 1\\n"}\n')
    (d / "config.json").write_text(json.dumps({"source": "my scrape", "filter": "python"}))


def _user_data_no_config(out: Path, teacher: Path) -> None:
    (out / "data").mkdir(parents=True)
    (out / "data" / "keep.jsonl").write_text('{"text": "x = 1"}\n')


@pytest.mark.parametrize("make, folder", [(_user_prune, "prune"), (_user_data, "data"),
                                          (_user_data_no_config, "data")])
@pytest.mark.parametrize("run_folder", [False, True], ids=["plain-folder", "run-folder"])
def test_overwrite_refuses_a_stage_folder_no_run_wrote(teacher_dir, tmp_path, capsys, make, folder,
                                                        run_folder):
    out = tmp_path / "out"
    make(out, teacher_dir)
    (out / "my_notes.txt").write_text("mine")
    path = write_yaml(tmp_path, _fast(teacher_dir, out))
    if run_folder:  # the folder is a run of this teacher and data (its run_config.yaml): no --overwrite needed
        (out / "run_config.yaml").write_text(yaml.safe_dump(config_dump(load_run(path)), sort_keys=False))
    before = _hashes(out)
    for argv in (["run", path, "--overwrite"], ["run", path]):
        code, err = _cli(capsys, *argv)
        assert _hashes(out) == before  # every file byte-identical, nothing added
        assert code == EXIT_USER_ERROR, err
        assert f"{folder}/" in err and "move" in err and "output_dir" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("name, text", [("report.md", "# my report\n"), ("run_config.yaml", "notes: mine\n")])
def test_top_level_files_of_a_folder_that_is_not_a_run_are_not_replaced(teacher_dir, tmp_path, capsys,
                                                                       name, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(text)
    path = write_yaml(tmp_path, _fast(teacher_dir, out))
    before = _hashes(out)
    code, err = _cli(capsys, "run", path, "--overwrite")
    assert _hashes(out) == before
    assert code == EXIT_USER_ERROR and name in err and "move" in err, err


def test_user_files_in_a_run_survive_overwrite_from_and_reruns(teacher_dir, tmp_path, capsys):
    out = tmp_path / "out"
    path = write_yaml(tmp_path, _fast(teacher_dir, out))
    assert _cli(capsys, "run", path)[0] == 0
    notes = {out / "my_notes.txt": "top level", out / "prune" / "NOTES.md": "why this target",
             out / "data" / "keep.jsonl": '{"text": "x"}\n', out / "evaluate" / "mine.txt": "m"}
    for f, text in notes.items():
        f.write_text(text)
    # --overwrite after changing the target: prune's own files are replaced, the user's are not
    path = write_yaml(tmp_path, _fast(teacher_dir, out, prune={"target": {"intermediate_size": 48},
                                                               "importance": "random"}))
    assert _cli(capsys, "run", path, "--overwrite")[0] == 0
    assert AutoConfig.from_pretrained(out / "prune" / "model").intermediate_size == 48
    # --from re-runs a stage and what follows, twice (the second rerun reads the first rerun's records)
    assert _cli(capsys, "run", path, "--from", "prune")[0] == 0
    assert _cli(capsys, "run", path, "--from", "data")[0] == 0
    for f, text in notes.items():
        assert f.read_text() == text, f
    for stage in ("data", "prune", "evaluate"):  # the done records list only what the stage wrote
        files = read_done(load_run(path), stage)["files"]
        assert not {"NOTES.md", "keep.jsonl", "mine.txt"} & set(files), (stage, files)
        assert "config.json" in files
    assert (out / "prune" / "model" / "model.safetensors").exists()


def test_interrupted_rerun_keeps_user_files(teacher_dir, tmp_path, monkeypatch):
    import minitron_hf.pruning.prune as prune_mod

    out = tmp_path / "out"
    path = write_yaml(tmp_path, _fast(teacher_dir, out))
    run_pipeline(load_run(path))
    (out / "prune" / "NOTES.md").write_text("why")
    real = prune_mod.run_prune

    def crash(*a, **k):  # the new target's prune dies after writing part of its output
        (out / "prune" / "partial.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_mod, "run_prune", crash)
    path = write_yaml(tmp_path, _fast(teacher_dir, out, prune={"target": {"intermediate_size": 48},
                                                               "importance": "random"}))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_run(path))
    assert (out / "prune" / "NOTES.md").read_text() == "why" and not (out / "prune" / "done.json").exists()
    # the rerun under yet another target starts the stage over: its partial output goes, the user's file stays
    monkeypatch.setattr(prune_mod, "run_prune", real)
    path = write_yaml(tmp_path, _fast(teacher_dir, out, prune={"target": {"intermediate_size": 32},
                                                               "importance": "random"}))
    assert run_pipeline(load_run(path))["prune"] == "ran"
    assert (out / "prune" / "NOTES.md").read_text() == "why" and not (out / "prune" / "partial.bin").exists()
    assert AutoConfig.from_pretrained(out / "prune" / "model").intermediate_size == 32


def test_a_stage_folder_of_an_older_version_is_still_the_runs(teacher_dir, tmp_path):
    """Older versions wrote config.json and done.json (no file list) and no keep-list: the folder is the run's, and a
    rerun of the stage replaces it."""
    out = tmp_path / "out"
    path = write_yaml(tmp_path, _fast(teacher_dir, out))
    run_pipeline(load_run(path))
    done = json.loads((out / "prune" / "done.json").read_text())
    del done["files"]
    (out / "prune" / "done.json").write_text(json.dumps(done))
    (out / "prune" / ".minitron-keep.json").unlink()
    path = write_yaml(tmp_path, _fast(teacher_dir, out, prune={"target": {"intermediate_size": 48},
                                                               "importance": "random"}))
    assert run_pipeline(load_run(path))["prune"] == "ran"
    assert AutoConfig.from_pretrained(out / "prune" / "model").intermediate_size == 48
