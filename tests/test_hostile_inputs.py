"""Hostile and mismatched inputs get one clear line before any work, and a preempted run is not a finished one
(issue 35).

Each test reproduces, through the real CLI (or a real subprocess), a case that before the fix was silently wrong
(a target of 64.7 pruned to 64, ``true`` to 1), a crash (MemoryError, IndexError, RuntimeError: exit 3) or a
preempted run reported as a success (exit 0)."""

import json
import os
import re
import resource
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml

from minitron_hf.cli import main
from minitron_hf.config import ConfigError, check_value
from minitron_hf.errors import EXIT_BUG, EXIT_PREEMPTED, EXIT_USER_ERROR

from conftest import save_with_tokenizer, tiny_model, write_random_words

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--seq-len", "32", "--per-device-train-batch-size", "2", "--eval-samples", "2", "--report-to", "none",
         "--logging-steps", "1", "--disable-tqdm", "true"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_model_dir):
    """A tiny random Llama with the real tokenizer (49152 ids) and the same number of vocabulary rows."""
    d = tmp_path_factory.mktemp("tiny") / "model"
    return save_with_tokenizer(tiny_model("llama", vocab_size=49152), d, default_model_dir)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """Small local text: enough 32-token blocks for 1000 steps of batch 2 in one epoch."""
    return write_random_words(tmp_path_factory.mktemp("data") / "docs.jsonl", 800)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------ 1. targets of the wrong type

@pytest.mark.parametrize("value", [64.7, True])
def test_prune_target_of_a_fraction_or_a_bool_is_refused_not_truncated(tiny_dir, tmp_path, capsys, value):
    cfg = tmp_path / "prune.yaml"
    out = tmp_path / "out"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_dir), "target": {"intermediate_size": value},
                                   "importance": "random", "seq_len": 32, "output": str(out)}))
    code, err = _cli(capsys, "prune", "--config", cfg)
    assert code == EXIT_USER_ERROR, err  # before: exit 0, pruned to 64 (64.7) or to 1 (true)
    line = _last_line(err)
    assert f"intermediate_size={value!r}" in line and "must be an integer" in line, line
    assert not out.exists()


def test_prune_target_integers_from_yaml_and_command_line_still_work(tiny_dir, tmp_path, capsys):
    from transformers import AutoConfig

    cfg = tmp_path / "prune.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_dir), "target": {"intermediate_size": 64.0,
                                                                       "drop_layers": [1.0]},
                                   "importance": "random", "seq_len": 32}))
    code, err = _cli(capsys, "prune", "--config", cfg, "--output", tmp_path / "a")
    assert code == 0, err
    c = AutoConfig.from_pretrained(tmp_path / "a")
    assert (c.intermediate_size, c.num_hidden_layers) == (64, 3)  # 64.0 is 64, as everywhere in the config layer
    code, err = _cli(capsys, "prune", "--model", tiny_dir, "--target", "intermediate_size=48", "--target",
                     "drop_layers=0,2", "--importance", "random", "--seq-len", "32", "--output", tmp_path / "b")
    assert code == 0, err
    c = AutoConfig.from_pretrained(tmp_path / "b")
    assert (c.intermediate_size, c.num_hidden_layers) == (48, 2)
    for item in ("intermediate_size=48.5", "intermediate_size=true", "drop_layers=1,true"):
        code, err = _cli(capsys, "prune", "--model", tiny_dir, "--target", item, "--importance", "random",
                         "--output", tmp_path / "c")
        assert code == EXIT_USER_ERROR and "must be" in _last_line(err), (item, err)
    assert not (tmp_path / "c").exists()


def test_config_layer_refuses_bools_for_numbers_and_fractions_for_integers_consistently(tiny_dir, tmp_path,
                                                                                       capsys):
    # the same rule for every field of every dataclass, from YAML and from the command line
    assert check_value("n", 64.0, int) == 64 and check_value("n", "64", int) == 64
    for value, tp in ((True, int), (64.5, int), ("64.5", int), (False, float), (True, typing.Literal[1, 2]),
                      (1, typing.Literal[True, False]), ([1, True], list[int]), ({"a": True}, dict[str, int])):
        with pytest.raises(ConfigError, match="must be"):
            check_value("n", value, tp)
    cfg = tmp_path / "c.yaml"
    for bad in ({"calib_samples": True}, {"calib_samples": 4.5}, {"max_shard_size_mb": False}):
        cfg.write_text(yaml.safe_dump({"model": str(tiny_dir), "target": {"intermediate_size": 64}, **bad}))
        code, err = _cli(capsys, "prune", "--config", cfg, "--output", tmp_path / "o")
        k, v = next(iter(bad.items()))
        assert code == EXIT_USER_ERROR and f"{k}={v!r} must be an integer" in err, err
    # an integral float is an integer on the command line too, as it is in YAML (before: argparse refused 32.0)
    code, err = _cli(capsys, "prune", "--model", tiny_dir, "--target", "intermediate_size=64", "--importance",
                     "random", "--seq-len", "32.0", "--output", tmp_path / "d")
    assert code == 0, err
    with pytest.raises(SystemExit) as e:
        main(["prune", "--model", str(tiny_dir), "--target", "intermediate_size=64", "--seq-len", "32.5"])
    assert e.value.code == EXIT_USER_ERROR and "expected an integer" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 2. hostile YAML

def _bomb(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: a few hundred bytes, width**levels values once the aliases are expanded."""
    items = [f"&a0 [{', '.join(['lol'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


MEMORY_LIMIT = 6 * 2**30  # an expanded bomb needs far more: if the bound regresses, a MemoryError, not a dead machine


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


_CHILD = """
import contextlib, io, json, sys
from minitron_hf.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def _cli_memory_limited(*argvs) -> list[tuple[int, str]]:
    """Run the CLI on each argv in one child process whose address space is limited (see MEMORY_LIMIT)."""
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([[str(a) for a in argv] for argv in argvs])],
                       capture_output=True, text=True, timeout=600, preexec_fn=_limit_memory, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


@pytest.mark.multiprocess
def test_yaml_alias_bomb_is_refused_naming_the_file(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(f"model: smollm2-135m\nseq_len: {_bomb()}\n")
    r = subprocess.run([sys.executable, "-m", "minitron_hf.cli", "prune", "--config", str(cfg), "--output",
                        str(tmp_path / "o"), "--target", "hidden_size=8"], capture_output=True, text=True,
                       timeout=300, preexec_fn=_limit_memory, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert r.returncode == EXIT_USER_ERROR, r.stderr[-2000:]  # before: MemoryError, exit 3
    line = _last_line(r.stderr)
    assert str(cfg) in line and "more than 100,000 values" in line, line


@pytest.mark.multiprocess
def test_yaml_bounds_hold_for_run_configs_set_overrides_and_every_file(tmp_path, capsys):
    bomb, plain, loop = tmp_path / "bomb.yaml", tmp_path / "plain.yaml", tmp_path / "loop.yaml"
    bomb.write_text(f"output_dir: {tmp_path / 'out'}\nseq_len: {_bomb()}\n")
    plain.write_text(f"output_dir: {tmp_path / 'out'}\n")
    loop.write_text(f"output_dir: {tmp_path / 'out'}\nseq_len: &a [*a]\n")  # an anchor inside itself
    (code, err), (code2, err2), (code3, err3) = _cli_memory_limited(
        ["run", bomb], ["run", plain, "--set", f"seq_len={_bomb()}"], ["run", loop])
    assert code == EXIT_USER_ERROR and str(bomb) in _last_line(err) and "100,000" in err, err[-2000:]
    assert code2 == EXIT_USER_ERROR and "--set" in _last_line(err2) and "100,000" in err2, err2[-2000:]
    assert code3 == EXIT_USER_ERROR and "recursive alias" in _last_line(err3), err3[-2000:]
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:  # 11 MiB: refused by size, not parsed for minutes
        f.write("seq_len: 32\n")
        f.write(("# " + "x" * 1022 + "\n") * (11 * 1024))
    code, err = _cli(capsys, "prune", "--config", big)
    assert code == EXIT_USER_ERROR and "at most 10,485,760 bytes" in _last_line(err) and str(big) in err, err
    deep = tmp_path / "deep.yaml"
    deep.write_text("seq_len: " + "[" * 20000 + "]" * 20000 + "\n")
    code, err = _cli(capsys, "prune", "--config", deep)
    assert code == EXIT_USER_ERROR and str(deep) in _last_line(err), err


# ------------------------------------------------------------------------------ 3. model and tokenizer mismatch

@pytest.fixture(scope="module")
def small_vocab_dir(tmp_path_factory, default_model_dir):
    """A model with 1000 vocabulary rows carrying a tokenizer of 49152 ids: the first batch is an IndexError."""
    d = tmp_path_factory.mktemp("small") / "model"
    return save_with_tokenizer(tiny_model("llama", vocab_size=1000), d, default_model_dir)


@pytest.mark.slow
def test_model_with_fewer_vocab_rows_than_its_tokenizer_is_refused_before_work(small_vocab_dir, data_file, tmp_path,
                                                                              capsys):
    m = str(small_vocab_dir)
    commands = {
        "distill": ["distill", "--student", m, "--teacher", m, "--data", data_file, "--output-dir", tmp_path / "d",
                    "--max-steps", "1", *TRAIN],
        "correct-teacher": ["correct-teacher", "--model", m, "--data", data_file, "--output-dir", tmp_path / "c",
                            "--max-steps", "1", *TRAIN],
        "prune": ["prune", "--model", m, "--data", data_file, "--target", "intermediate_size=64", "--calib-samples",
                  "2", "--seq-len", "32", "--output", tmp_path / "p"],
        "importance": ["importance", "--model", m, "--data", data_file, "--calib-samples", "2", "--seq-len", "32",
                       "--output", tmp_path / "i"],
        "eval loss": ["eval", "loss", m, "--data", data_file, "--samples", "2", "--seq-len", "32"],
    }
    for name, argv in commands.items():
        code, err = _cli(capsys, *argv)
        line = _last_line(err)
        assert code == EXIT_USER_ERROR, (name, err[-3000:])  # before: IndexError mid-run, exit 3
        assert "1000 vocabulary rows" in line and "49152 ids" in line and m in line, (name, line)
        assert "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name in "dcpi" and any(p.rglob("*.safetensors"))]


def test_vocab_check_counts_added_tokens_and_allows_padding_rows(default_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from minitron_hf.compat import VocabularyMismatchError, check_vocab, tokenizer_id_count

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    base = tokenizer_id_count(tok)
    assert base == len(tok) == 49152
    padded = tiny_model("llama", vocab_size=49152 + 64)  # rows beyond the tokenizer: never looked up, fine
    assert check_vocab(padded, tok, "padded") == base
    tok.add_tokens(["<tool_call_x>"])  # an added token: id 49152, one beyond the model's rows
    exact = tiny_model("llama", vocab_size=49152)
    with pytest.raises(VocabularyMismatchError, match=r"'exact' has 49152 vocabulary rows .* ids up to 49152"):
        check_vocab(exact, tok, "exact")
    check_vocab(padded, tok, "padded")
    d = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "m", default_model_dir)
    tok.save_pretrained(d)  # a checkpoint folder: only its config is read
    with pytest.raises(VocabularyMismatchError, match="49153 ids"):
        check_vocab(d, tok, d)


# ------------------------------------------------------------------------------ 4. resume from another shape

@pytest.mark.slow
def test_resume_from_a_checkpoint_of_another_shape_names_the_tensor_and_both_shapes(tiny_dir, data_file, tmp_path,
                                                                                   capsys, default_model_dir):
    out = tmp_path / "out"
    base = ["distill", "--teacher", tiny_dir, "--data", data_file, "--output-dir", out, "--save-strategy", "steps",
            "--save-steps", "1", *TRAIN]
    code, err = _cli(capsys, *base, "--student", tiny_dir, "--max-steps", "1")
    assert code == 0 and (out / "checkpoint-1").is_dir(), err
    other = save_with_tokenizer(tiny_model("llama", vocab_size=49152, intermediate_size=64), tmp_path / "other",
                                default_model_dir)
    code, err = _cli(capsys, *base, "--student", other, "--max-steps", "2", "--resume-from-checkpoint", "true")
    assert code == EXIT_USER_ERROR, err[-3000:]  # before: RuntimeError from load_state_dict, exit 3
    line = _last_line(err)
    assert str(out / "checkpoint-1") in line and str(other) in line, line
    m = re.search(r"tensor '(model\.layers\.\d+\.mlp\.\w+\.weight)' has shape (\[\d+, \d+\]) in the checkpoint and "
                  r"(\[\d+, \d+\]) in the model", line)
    assert m and sorted(json.loads(m[2]) + json.loads(m[3])) == sorted([48, 96, 48, 64]), line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # nothing written or removed


def test_trainer_resume_checks_shapes_and_depth_before_loading(tmp_path):
    """The checkpoint mixin itself (every trainer: distill, correct, SFT, RPO) checks before load_state_dict."""
    from minitron_hf.data import collate_blocks
    from minitron_hf.distill.correct import CorrectionTrainer
    from minitron_hf.distill.trainer import TrainArgs
    from minitron_hf.resume import CheckpointShapeError

    def trainer(model, steps):
        args = TrainArgs(output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, max_steps=steps,
                         report_to="none", save_strategy="steps", save_steps=1, disable_tqdm=True)
        x = torch.randint(0, 128, (16, 16), generator=torch.Generator().manual_seed(0))
        from minitron_hf.data import BlockDataset

        return CorrectionTrainer(model=model.train(), args=args, train_dataset=BlockDataset(x),
                                 data_collator=collate_blocks)

    trainer(tiny_model("llama"), 1).train()
    ckpt = tmp_path / "o" / "checkpoint-1"
    with pytest.raises(CheckpointShapeError, match=rf"{re.escape(str(ckpt))}.*tensor '.*mlp.*' has shape \[.*\] in "
                       r"the checkpoint and \[.*\] in the model"):
        trainer(tiny_model("llama", intermediate_size=64), 2).train(resume_from_checkpoint=True)
    with pytest.raises(CheckpointShapeError, match="num_hidden_layers=4 and the model 5"):
        trainer(tiny_model("llama", num_hidden_layers=5), 2).train(resume_from_checkpoint=True)
    trainer(tiny_model("llama"), 2).train(resume_from_checkpoint=True)  # the same shape resumes
    assert (tmp_path / "o" / "checkpoint-2").is_dir()


# ------------------------------------------------------------------------------ 5. SIGTERM

def _distill_cmd(tiny_dir, data_file, out, *extra):
    return [sys.executable, "-m", "minitron_hf.cli", "distill", "--student", str(tiny_dir), "--teacher",
            str(tiny_dir), "--data", str(data_file), "--output-dir", str(out), "--save-strategy", "no", *TRAIN, *extra]


def _sigterm_after_first_step(cmd) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if "'loss'" in line:  # a training step was logged
                p.send_signal(signal.SIGTERM)
                break
        rest, _ = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, "".join(lines) + rest


@pytest.mark.multiprocess
def test_sigterm_with_jit_checkpoint_exits_preempted_and_resumes(tiny_dir, data_file, tmp_path):
    out = tmp_path / "out"
    code, log = _sigterm_after_first_step(_distill_cmd(tiny_dir, data_file, out, "--max-steps", "1000",
                                                       "--enable-jit-checkpoint", "true"))
    assert code == EXIT_PREEMPTED == 143, log[-3000:]  # before: exit 0, as if training had finished
    line = [x for x in log.splitlines() if x.startswith("minitron distill: preempted: ")]
    assert line, log[-3000:]
    m = re.search(r"checkpoint saved at step (\d+): (\S+); resume with --resume-from-checkpoint true", line[0])
    assert m and Path(m[2]) == out / f"checkpoint-{m[1]}" and Path(m[2]).is_dir(), line
    assert not (out / "final").exists() and not (out / "distill.json").exists()
    step = int(m[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(_distill_cmd(tiny_dir, data_file, out, "--max-steps", str(step + 2),
                                    "--resume-from-checkpoint", "true"),
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{step}'}" in r.stderr
    assert json.loads((out / "distill.json").read_text())["steps"] == step + 2 and (out / "final").is_dir()


@pytest.mark.multiprocess
def test_sigterm_without_jit_checkpoint_is_not_a_success(tiny_dir, data_file, tmp_path):
    out = tmp_path / "out"
    code, log = _sigterm_after_first_step(_distill_cmd(tiny_dir, data_file, out, "--max-steps", "1000"))
    assert code != 0 and code not in (EXIT_USER_ERROR, EXIT_BUG), log[-3000:]
    assert not (out / "final").exists()


# ------------------------------------------------------------------------------ 6. full disk in torch.save

@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full for torch's real write error")
@pytest.mark.parametrize("free,expect", [(0, "no space left on the device of"), (50 * 2**30, "could not write")])
def test_torch_save_failing_on_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(
        tiny_dir, data_file, tmp_path, capsys, monkeypatch, free, expect):
    import minitron_hf.storage as storage

    real = torch.save

    def save(obj, f, *a, **k):  # the optimizer state of checkpoint-2 goes to a full device: torch's own error
        if str(f).endswith("optimizer.pt") and "checkpoint-2" in str(f):
            return real(obj, "/dev/full", *a, **k)
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(storage, "free_bytes", lambda path: free)
    out = tmp_path / "out"
    code, err = _cli(capsys, "distill", "--student", tiny_dir, "--teacher", tiny_dir, "--data", data_file,
                     "--output-dir", out, "--save-strategy", "steps", "--save-steps", "1", "--max-steps", "3", *TRAIN)
    assert code == EXIT_USER_ERROR, err[-3000:]  # before: internal error (RuntimeError: ... unexpected pos), exit 3
    line = _last_line(err)
    assert expect in line and "checkpoint-2" in line and "removed" in line, line
    assert "checkpoint-1, with --resume-from-checkpoint true" in line, line
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-1"]  # no partial checkpoint-2
