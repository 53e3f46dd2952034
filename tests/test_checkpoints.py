"""Checkpoints never half-written or poisoned: atomic saves, resume from the newest complete checkpoint,
rotation that keeps it, finite-only saves with a clear stop, checked training numbers, and output
directories of an earlier run that are neither silently overwritten nor mixed."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, TrainerCallback

from minitron_hf.checkpoints import MARKER, CheckpointError, latest_complete_checkpoint
from minitron_hf.data import collate_blocks
from minitron_hf.distill.trainer import DistillationConfig, DistillationTrainer, TrainArgs
from minitron_hf.errors import MinitronError
from minitron_hf.resume import check_output_dir, parse_resume_flag, resolve_resume
from minitron_hf.training import CheckpointMixin, CheckpointSaveError, TrainingArgumentsError, TrainingDivergedError

from conftest import bigram_data, distill_args, tiny_model

TESTS = Path(__file__).parent
STEPS = dict(max_steps=6, save_strategy="steps", save_steps=2)


def _pair():
    """A random tiny teacher and a narrower student (resume needs no trained teacher: this is quicker)."""
    return (tiny_model("llama", vocab_size=128, seed=1, hidden_size=36, intermediate_size=48),
            tiny_model("llama", vocab_size=128, seed=0))


def _trainer(root, student=None, teacher=None, **kw):
    if student is None:
        student, teacher = _pair()
    return DistillationTrainer(model=student.train(), teacher_model=teacher, args=distill_args(root, **kw),
                               train_dataset=bigram_data(), data_collator=collate_blocks)


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


_FULL: dict = {}


def _uninterrupted(tmp_path) -> dict[str, torch.Tensor]:
    """Final weights of the reference run (6 steps, a checkpoint every 2), computed once."""
    if not _FULL:
        t = _trainer(tmp_path / "full", **STEPS)
        t.train()
        _FULL.update(_weights(t))
    return _FULL


def _assert_same(weights, trainer):
    got = trainer.model.state_dict()
    for k, v in weights.items():
        torch.testing.assert_close(got[k], v, atol=1e-5, rtol=1e-4)


def _fake_checkpoint(d: Path, step: int) -> Path:
    """A minimal complete checkpoint folder (what the completeness check reads)."""
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.ones(2)}, str(d / "model.safetensors"))
    return d


# -------------------------------------------------------------------------------------- item 4

def test_full_disk_mid_save_leaves_no_partial_checkpoint_and_resume_reaches_the_same_weights(tmp_path, monkeypatch):
    full = _uninterrupted(tmp_path)
    real = DistillationTrainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):  # model.safetensors is written by now
        if self.state.global_step == 4:
            assert (Path(output_dir) / "model.safetensors").exists()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", full_disk)
    out = tmp_path / "b" / "out"
    with pytest.raises(CheckpointSaveError) as err:
        _trainer(tmp_path / "b", **STEPS).train()
    msg = str(err.value)
    assert isinstance(err.value, MinitronError) and "\n" not in msg
    assert "no space left" in msg and "while saving checkpoint-4" in msg and str(out) in msg
    assert "newest complete checkpoint, checkpoint-2, with --resume-from-checkpoint true" in msg
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["checkpoint-2"]  # no partial checkpoint-4
    monkeypatch.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", real)
    s, t = _pair()
    resumed = _trainer(tmp_path / "b", student=s, teacher=t, **STEPS)
    resumed.train(resume_from_checkpoint=True)
    assert [h["step"] for h in resumed.state.log_history if "loss" in h] == [1, 2, 3, 4, 5, 6]  # 1, 2 from checkpoint-2
    _assert_same(full, resumed)


_KILL = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from minitron_hf.distill.trainer import DistillationTrainer
from test_checkpoints import _trainer

def killed(self, output_dir):
    if self.state.global_step == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # a kill in the middle of the save: no cleanup can run
    return real(self, output_dir)

real = DistillationTrainer._save_optimizer_and_scheduler
DistillationTrainer._save_optimizer_and_scheduler = killed
_trainer(Path({root!r}), max_steps=6, save_strategy="steps", save_steps=2).train()
"""


@pytest.mark.multiprocess
def test_kill_mid_save_is_recognised_and_resume_uses_the_previous_complete_checkpoint(tmp_path, caplog):
    full = _uninterrupted(tmp_path)
    root = tmp_path / "k"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    r = subprocess.run([sys.executable, "-c", _KILL.format(tests=str(TESTS), root=str(root))], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    out = root / "out"
    # the interrupted save is under a name neither get_last_checkpoint nor rotation matches
    assert not (out / "checkpoint-4").exists()
    assert (out / "tmp-checkpoint-4" / "checkpoint-4" / "model.safetensors").exists()
    from transformers.trainer_utils import get_last_checkpoint

    assert Path(get_last_checkpoint(str(out))).name == "checkpoint-2"
    (out / "checkpoint-9").mkdir()  # and a leftover empty folder (an older tool's interrupted save)
    assert latest_complete_checkpoint(out).name == "checkpoint-2"
    s, t = _pair()
    resumed = _trainer(root, student=s, teacher=t, **STEPS)
    with caplog.at_level(logging.INFO, logger="minitron_hf"):  # checkpoints (skipping) and resume (resuming from)
        resumed.train(resume_from_checkpoint="true")  # as the CLI passes it
    assert any("checkpoint-9" in r.message and "skipping" in r.message for r in caplog.records)
    assert any(r.message.startswith("resuming from") and r.message.endswith("checkpoint-2") for r in caplog.records)
    assert not (out / "tmp-checkpoint-4").exists()  # the unfinished save was cleaned up
    _assert_same(full, resumed)
    assert (out / "checkpoint-6" / MARKER).exists()


def test_partial_checkpoints_are_skipped_on_resume_with_a_log_line(tmp_path, caplog):
    t = _trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    t.train()
    out = tmp_path / "out"
    (out / "checkpoint-9").mkdir()  # empty
    (out / "checkpoint-8").mkdir()  # only the weights: a save killed after its first file (transformers' layout)
    shutil.copy2(out / "checkpoint-4" / "model.safetensors", out / "checkpoint-8")
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-7")  # everything, but truncated weights
    w = out / "checkpoint-7" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")  # a half-written trainer_state.json
    (out / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "log_hi')
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-5")  # transformers' JIT checkpoint, unfinished
    (out / "checkpoint-5" / "checkpoint-is-incomplete.txt").write_text("in progress")
    with caplog.at_level(logging.INFO, logger="minitron_hf.checkpoints"):
        assert latest_complete_checkpoint(out) == out / "checkpoint-4"
    skipped = " ".join(r.message for r in caplog.records if r.levelno == logging.WARNING)
    for n, why in ((9, "no trainer_state.json"), (8, "no trainer_state.json"), (7, "model.safetensors is truncated"),
                   (6, "trainer_state.json is unreadable"), (5, "checkpoint-is-incomplete.txt")):
        assert f"checkpoint-{n} ({why}" in skipped
    assert "newest complete checkpoint" in caplog.text and "checkpoint-4" in caplog.text
    s, te = _pair()
    resumed = _trainer(tmp_path, student=s, teacher=te, max_steps=6, save_strategy="steps", save_steps=2)
    with caplog.at_level(logging.INFO, logger="minitron_hf.resume"):
        resumed.train(resume_from_checkpoint=True)
    assert "resuming from " + str(out / "checkpoint-4") in caplog.text
    # the partial checkpoint-6 was replaced by the complete one this run wrote
    assert json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6


def test_rotation_never_deletes_the_only_complete_checkpoint_for_a_partial_one(tmp_path):
    out = tmp_path / "out"
    partial = out / "checkpoint-90"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\0" * 16)
    future = partial.stat().st_mtime + 60  # newest both by step and by time: what rotation protects
    os.utime(partial, (future, future))
    t = _trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1)
    t.train()
    assert latest_complete_checkpoint(out, log=False) == out / "checkpoint-4"
    assert not (out / "checkpoint-2").exists()  # the limit still applies to complete checkpoints


# -------------------------------------------------------------------------------------- item 5

class _NanGradAt(TrainerCallback):
    """From optimizer step ``step`` on, the gradients are NaN (the loss itself is still finite)."""

    def __init__(self, trainer, step):
        self.trainer, self.step, self.hook = trainer, step, None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step + 1 == self.step and self.hook is None:
            p = self.trainer.model.get_input_embeddings().weight
            self.hook = p.register_hook(lambda g: g * float("nan"))


def test_nonfinite_weights_are_never_saved_and_the_error_names_the_last_good_checkpoint(tmp_path):
    t = _trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=1)
    t.add_callback(_NanGradAt(t, 3))
    out = tmp_path / "out"
    with pytest.raises(TrainingDivergedError) as err:
        t.train()
    e = err.value
    assert isinstance(e, MinitronError) and isinstance(e, FloatingPointError)
    # step 3 started from checkpoint-2's (finite) weights and blew up: the good one is checkpoint-1, from which
    # a further step succeeded; checkpoint-2 is kept under another name, where no resume picks it
    assert not (out / "checkpoint-2").exists() and (out / "diverged-checkpoint-2" / "model.safetensors").exists()
    assert latest_complete_checkpoint(out, log=False) == out / "checkpoint-1"
    assert ("(checkpoint-2, finite but where the divergence started, was renamed diverged-checkpoint-2 so that no "
            "resume picks it)") in str(e)
    assert e.step == 3 and e.checkpoint == out / "checkpoint-1" and e.output_dir == out and e.loss is not None
    assert "not finite" in str(e) and "\n" not in str(e)
    hint = (f"lower the learning rate or check the data, then resume with --resume-from-checkpoint "
            f"{out / 'checkpoint-1'} --learning-rate <lower>")
    assert hint in str(e)
    assert not (out / "checkpoint-3").exists() and not list(out.glob("tmp-*"))
    for ckpt in out.glob("checkpoint-*"):
        assert all(torch.isfinite(v).all() for v in load_file(str(ckpt / "model.safetensors")).values())
    other = e.with_hint("rerun `minitron run CONFIG`")
    assert str(other).endswith("rerun `minitron run CONFIG`") and other.checkpoint == e.checkpoint
    # resuming from the named checkpoint works (and, without the NaN gradients, finishes)
    s, te = _pair()
    resumed = _trainer(tmp_path, student=s, teacher=te, max_steps=3, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=str(e.checkpoint))
    assert resumed.state.global_step == 3


def test_divergence_before_any_checkpoint_says_there_is_none(tmp_path):
    t = _trainer(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    t.add_callback(_NanGradAt(t, 1))
    with pytest.raises(TrainingDivergedError, match="there is no good checkpoint in .*start again") as err:
        t.train()
    assert err.value.checkpoint is None and err.value.step == 1


def test_correction_and_alignment_trainers_share_the_mixin(tmp_path, monkeypatch):
    from minitron_hf.alignment.rpo import RPOTrainer
    from minitron_hf.alignment.sft import sft_trainer_class
    from minitron_hf.distill.correct import CorrectionTrainer

    for cls in (CorrectionTrainer, RPOTrainer, sft_trainer_class(), DistillationTrainer):
        assert issubclass(cls, CheckpointMixin) and cls.__mro__[1] is CheckpointMixin
    real = PreTrainedModel.save_pretrained

    def full_disk(self, d, *a, **k):
        if str(d).endswith("checkpoint-2"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, d, *a, **k)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    args = TrainArgs(output_dir=str(tmp_path / "c"), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=3,
                     report_to="none", save_strategy="steps", save_steps=1, disable_tqdm=True)
    trainer = CorrectionTrainer(model=tiny_model("llama").train(), args=args, train_dataset=bigram_data(),
                                data_collator=collate_blocks)
    with pytest.raises(CheckpointSaveError, match="no space left .* while saving checkpoint-2"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["checkpoint-1"]


# -------------------------------------------------------------------------------------- item 6

@pytest.mark.parametrize("field,value", [
    ("max_steps", -5), ("max_steps", 0), ("learning_rate", -1.0), ("per_device_train_batch_size", 0),
    ("per_device_eval_batch_size", 0), ("gradient_accumulation_steps", 0), ("num_train_epochs", 0),
    ("save_steps", 0), ("eval_steps", -1), ("logging_steps", 0), ("warmup_steps", -1), ("weight_decay", -0.1),
    ("max_grad_norm", -1.0), ("adam_beta2", 1.0), ("learning_rate", float("nan")),
])
def test_invalid_training_numbers_are_refused_before_any_output(tmp_path, field, value):
    out = tmp_path / "o"
    with pytest.raises(TrainingArgumentsError, match=f"{field}={value!r} \\(must be"):
        DistillationConfig(output_dir=str(out), report_to="none", **{field: value})
    assert not out.exists()


def test_invalid_training_numbers_in_every_args_class(tmp_path, capsys):
    from minitron_hf.alignment.rpo import RPOConfig
    from minitron_hf.alignment.sft import SFTArgs
    from minitron_hf.cli import main

    for cls in (TrainArgs, SFTArgs, RPOConfig):
        with pytest.raises(TrainingArgumentsError, match="max_steps=-5 .*or -1 to train num_train_epochs epochs"):
            cls(output_dir=str(tmp_path / "o"), report_to="none", max_steps=-5)
    with pytest.raises(TrainingArgumentsError, match="max_steps=0 .*; learning_rate=-1"):
        TrainArgs(output_dir=str(tmp_path / "o"), report_to="none", max_steps=0, learning_rate=-1)
    assert TrainArgs(output_dir=str(tmp_path / "o"), report_to="none", max_steps=-1, warmup_steps=0.1).max_steps == -1
    assert main(["distill", "--student", "x", "--teacher", "y", "--output-dir", str(tmp_path / "o"),
                 "--max-steps", "-5", "--report-to", "none"]) == 2
    err = capsys.readouterr().err
    assert "max_steps=-5" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


# -------------------------------------------------------------------------------------- items 10/11

def test_resume_flag_strings(tmp_path):
    out = tmp_path / "out"
    assert [parse_resume_flag(v) for v in ("true", "True", "1", True)] == [True] * 4
    assert [parse_resume_flag(v) for v in ("false", "False", "", "0", None, False)] == [None] * 6
    assert parse_resume_flag("runs/x/checkpoint-5") == "runs/x/checkpoint-5"
    for given, parsed in (("true", True), ("false", None), ("", None)):
        args = DistillationConfig(output_dir=str(out), report_to="none", resume_from_checkpoint=given)
        assert args.resume_from_checkpoint is parsed
    with pytest.raises(CheckpointError, match=f"output_dir {out} holds no complete checkpoint"):
        resolve_resume("true", out)
    good = _fake_checkpoint(out / "checkpoint-3", 3)
    (out / "checkpoint-5").mkdir()
    assert resolve_resume("True", out) == str(good)
    assert resolve_resume("false", out) is None
    with pytest.raises(CheckpointError, match="resume_from_checkpoint=.*checkpoint-7: no such directory"):
        resolve_resume(str(out / "checkpoint-7"), out)
    with pytest.raises(CheckpointError, match="resume_from_checkpoint=.*checkpoint-5 is not a complete checkpoint"):
        resolve_resume(str(out / "checkpoint-5"), out)
    with pytest.raises(CheckpointError, match="did you mean .*checkpoint-3"):
        resolve_resume(str(out), out)


def test_pipeline_resumes_only_from_a_complete_checkpoint(tmp_path):
    from minitron_hf.pipeline.base import resume_from as _resume_from

    (tmp_path / "checkpoint-4").mkdir()
    assert _resume_from(str(tmp_path), True) is None  # only a partial one: the stage starts over
    _fake_checkpoint(tmp_path / "checkpoint-2", 2)
    assert _resume_from(str(tmp_path), True) is True and _resume_from(str(tmp_path), False) is None


@pytest.mark.slow
def test_distill_refuses_an_earlier_runs_checkpoints_and_overwrite_removes_only_them(tiny_pair_dirs, tmp_path, capsys,
                                                                                     monkeypatch):
    from minitron_hf.cli import main

    s, t = tiny_pair_dirs
    out = tmp_path / "run"
    _fake_checkpoint(out / "checkpoint-2", 2)
    (out / "checkpoint-7").mkdir()
    (out / "tmp-checkpoint-9").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints-backup").mkdir()
    common = ["--student", str(s), "--teacher", str(t), "--output-dir", str(out), "--report-to", "none",
              "--max-steps", "2", "--per-device-train-batch-size", "2", "--seq-len", "32", "--eval-samples", "2",
              "--save-strategy", "no"]
    with monkeypatch.context() as m:
        m.setattr("minitron_hf.distill.run.load_model", lambda *a, **k: pytest.fail("weights loaded"))
        m.setattr("minitron_hf.distill.correct.load_model", lambda *a, **k: pytest.fail("weights loaded"))
        assert main(["distill", *common]) == 2
        err = capsys.readouterr().err
        assert (f"output_dir {out} holds checkpoints from an earlier run (newest complete: checkpoint-2); pass "
                "--resume-from-checkpoint true to continue it or --overwrite to start over") in err
        assert main(["distill", *common, "--resume-from-checkpoint", str(out / "checkpoint-7")]) == 2
        assert "checkpoint-7 is not a complete checkpoint" in capsys.readouterr().err
        assert main(["correct-teacher", "--model", str(t), "--output-dir", str(out), "--report-to", "none",
                     "--max-steps", "2"]) == 2
        assert "holds checkpoints from an earlier run (newest complete: checkpoint-2)" in capsys.readouterr().err
    assert main(["distill", *common, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints-backup", "curves.png", "distill.json", "final",
                                                     "notes.txt"]
    assert check_output_dir(out, None, False) is None  # nothing left to refuse


@pytest.mark.slow
def test_sft_stage_checkpoints_go_through_the_mixin(tmp_path, default_model_dir):
    from conftest import save_with_tokenizer
    from minitron_hf.alignment.sft import SFTArgs, SFTStageConfig, run_sft

    policy = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "policy", default_model_dir)
    args = SFTArgs(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=4, max_length=64,
                   learning_rate=1e-3, save_strategy="steps", save_steps=1, save_total_limit=1)
    run_sft(SFTStageConfig(model=str(policy), data="builtin:math-code", max_samples=8), args)
    out = tmp_path / "sft"
    assert latest_complete_checkpoint(out, log=False) == out / "checkpoint-2"
    assert (out / "checkpoint-2" / MARKER).exists()
    assert not (out / "checkpoint-1").exists() and not list(out.glob("tmp-*"))


def test_resume_follows_the_learning_rate_given_now(tmp_path, caplog):
    """'Lower the learning rate, then resume' must train at the new rate: the Trainer restores the checkpoint's
    optimizer and scheduler (and with them the old rate); the mixin rescales the restored schedule."""
    t = _trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-2,
                 lr_scheduler_type="constant", logging_steps=1)
    t.train()
    s, te = _pair()
    resumed = _trainer(tmp_path, student=s, teacher=te, max_steps=4, save_strategy="no", learning_rate=1e-4,
                       lr_scheduler_type="constant", logging_steps=1)
    with caplog.at_level("WARNING", logger="minitron_hf.training"):
        resumed.train(resume_from_checkpoint=True)
    lrs = [h["learning_rate"] for h in resumed.state.log_history if "learning_rate" in h and h["step"] > 2]
    assert lrs and all(lr == pytest.approx(1e-4) for lr in lrs), resumed.state.log_history
    assert "learning_rate=0.0001" in caplog.text and "rescaled" in caplog.text


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe", "nemotron_h", "llama"])
def test_resume_loads_every_weight_of_families_that_rename_on_disk(tmp_path, model_type, monkeypatch):
    """Mixtral, Qwen3-MoE and Nemotron-H checkpoints name their tensors otherwise than the model holds them (per-expert
    files for stacked experts, backbone.* for model.*): the Trainer's non-strict load_state_dict loaded no expert / no
    weight at all, with a warning only. A resumed run must end with the uninterrupted run's weights."""
    steps = dict(max_steps=4, save_strategy="steps", save_steps=2)

    def pair(seed):
        return (tiny_model(model_type, vocab_size=128, seed=seed).train(), tiny_model(model_type, vocab_size=128, seed=7))

    def run(root, seed, resume=None):
        s, t = pair(seed)
        tr = DistillationTrainer(model=s, teacher_model=t, args=distill_args(root, **steps),
                                 train_dataset=bigram_data(), data_collator=collate_blocks)
        tr.train(resume_from_checkpoint=resume)
        return tr

    full = _weights(run(tmp_path / "full", 0))
    ckpt = tmp_path / "full" / "out" / "checkpoint-2"
    assert ckpt.is_dir()
    resumed = run(tmp_path / "resumed", 3, resume=str(ckpt))  # another seed: only a real load reaches `full`
    _assert_same(full, resumed)
    if model_type != "llama":  # without the load under the model's own names, the resumed run ends elsewhere
        import minitron_hf.training as training_mod

        monkeypatch.setattr(training_mod, "load_renamed_weights", lambda model, checkpoint: False)
        with pytest.raises(AssertionError):
            _assert_same(full, run(tmp_path / "plain", 3, resume=str(ckpt)))
