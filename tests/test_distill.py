"""DistillationTrainer on tiny models: loss equality, learning, resume, data parallel, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minitron_hf.data import collate_blocks
from minitron_hf.distill.losses import naive_kd_loss
from minitron_hf.distill.trainer import DistillationError, DistillationTrainer

from conftest import bigram_data, distill_args, tiny_model

ROOT = Path(__file__).parents[1]


_TEACHER: dict = {}


def _trained_teacher(vocab=128):
    """A tiny teacher fitted to the bigram data below (a random teacher's outputs are near uniform)."""
    if vocab not in _TEACHER:
        m = tiny_model("llama", vocab_size=vocab, seed=0).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        data = bigram_data(64, vocab=vocab).blocks
        for i in range(60):
            batch = data[(i * 8) % 64:(i * 8) % 64 + 8]
            loss = m(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        _TEACHER[vocab] = {k: v.clone() for k, v in m.state_dict().items()}
    m = tiny_model("llama", vocab_size=vocab, seed=0)
    m.load_state_dict(_TEACHER[vocab])
    return m.eval()


def _pair(vocab=128, **student_kw):
    teacher = _trained_teacher(vocab)
    student = tiny_model("llama", vocab_size=vocab, seed=1, **({"hidden_size": 36, "intermediate_size": 48} | student_kw))
    return student, teacher


def _trainer(tmp_path, student=None, teacher=None, **kw):
    if student is None:
        student, teacher = _pair()
    return DistillationTrainer(model=student, teacher_model=teacher, args=distill_args(tmp_path, **kw),
                               train_dataset=bigram_data(), eval_dataset=bigram_data(8, seed=1),
                               data_collator=collate_blocks)


@pytest.mark.parametrize("chunk", [5, 0])
def test_compute_loss_equals_naive_full_logits(tmp_path, chunk):
    trainer = _trainer(tmp_path, kd_chunk_size=chunk, temperature=2.0, kd_loss="reverse_kl", ce_weight=0.3)
    batch = collate_blocks([bigram_data()[i] for i in range(3)])
    loss = trainer.compute_loss(trainer.model, batch, num_items_in_batch=torch.tensor(40))
    grads = torch.autograd.grad(loss, [p for p in trainer.model.parameters()])
    with torch.no_grad():
        zt = trainer.teacher(batch["input_ids"]).logits
    zs = trainer.model(batch["input_ids"]).logits
    ref = naive_kd_loss(zs, zt, batch["shift_labels"], kind="reverse_kl", temperature=2.0, ce_weight=0.3, num_items=40)
    ref_grads = torch.autograd.grad(ref, [p for p in trainer.model.parameters()])
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_teacher_is_frozen_and_kd_of_model_with_itself_is_zero(tmp_path):
    s, _ = _pair()
    t = tiny_model("llama", vocab_size=128, seed=1, hidden_size=36, intermediate_size=48)  # same weights as s
    assert all(torch.equal(a, b) for a, b in zip(s.parameters(), t.parameters()))
    trainer = _trainer(tmp_path, student=s, teacher=t)
    assert not any(p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training
    batch = collate_blocks([bigram_data()[i] for i in range(2)])
    assert abs(trainer.compute_loss(trainer.model, batch).item()) < 1e-6


def test_distillation_lowers_kd_and_lm_loss(tmp_path):
    trainer = _trainer(tmp_path, max_steps=40)
    before = trainer.evaluate()
    teacher_before = [p.clone() for p in trainer.teacher.parameters()]
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_kd_loss"] < 0.8 * before["eval_kd_loss"]
    assert after["eval_student_lm_loss"] < before["eval_student_lm_loss"]
    assert after["eval_teacher_lm_loss"] == pytest.approx(before["eval_teacher_lm_loss"], rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, trainer.teacher.parameters()))


class _StopAt(__import__("transformers").TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


def test_resume_continues_the_same_curve(tmp_path):
    full = _trainer(tmp_path / "a", max_steps=10)
    full.train()
    s, t = _pair()
    part = _trainer(tmp_path / "b", student=s, teacher=t, max_steps=10, save_strategy="steps", save_steps=100)
    part.add_callback(_StopAt(5))
    part.train()
    ckpt = tmp_path / "b" / "out" / "checkpoint-5"
    assert ckpt.exists()
    s2, t2 = _pair()
    resumed = _trainer(tmp_path / "b", student=s2, teacher=t2, max_steps=10, save_strategy="steps", save_steps=100)
    resumed.train(resume_from_checkpoint=str(ckpt))
    la = [h["loss"] for h in full.state.log_history if "loss" in h]
    lb = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert len(la) == 10 and lb[-1] == pytest.approx(la[-1], abs=1e-5)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, max_steps=10, save_strategy="steps", save_steps=2)
    real = DistillationTrainer.kd_loss

    def poisoned(self, *a, **k):
        loss = real(self, *a, **k)
        return loss * float("nan") if self.state.global_step >= 3 else loss

    monkeypatch.setattr(DistillationTrainer, "kd_loss", poisoned)
    with pytest.raises(FloatingPointError, match="loss is nan at step 4.*checkpoint"):
        trainer.train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    state = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_bad_pairs_and_settings(tmp_path):
    s, t = _pair(vocab=128)
    t_big = tiny_model("llama", vocab_size=160)
    with pytest.raises(DistillationError, match="student vocab_size=128 and teacher vocab_size=160"):
        _trainer(tmp_path, student=s, teacher=t_big)
    # rows padded beyond the tokenizer are fine
    DistillationTrainer(model=s, teacher_model=t_big, args=distill_args(tmp_path), tokenizer_size=100,
                        train_dataset=bigram_data(), data_collator=collate_blocks)
    with pytest.raises(DistillationError, match="teacher_model is required"):
        DistillationTrainer(model=s, args=distill_args(tmp_path))
    with pytest.raises(DistillationError, match="kd_loss='kl'"):
        distill_args(tmp_path, kd_loss="kl")
    with pytest.raises(DistillationError, match="temperature"):
        distill_args(tmp_path, temperature=0)


def test_cli_bad_inputs_fail_before_training(tiny_pair_dirs, tmp_path, capsys, monkeypatch):
    from minitron_hf.cli import main

    monkeypatch.setattr("minitron_hf.distill.run.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    s, t = tiny_pair_dirs
    common = ["--output-dir", str(tmp_path / "o"), "--report-to", "none", "--max-steps", "2"]
    assert main(["distill", "--teacher", str(t), *common]) == 2
    assert "student is required" in capsys.readouterr().err
    assert main(["distill", "--student", str(s), "--teacher", str(tmp_path / "nope"), *common]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["distill", "--student", str(s), "--teacher", str(t), "--seq-len", "4096", *common]) == 2
    assert "max_position_embeddings=256" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}))
    assert main(["distill", "--student", str(s), "--teacher", str(t), "--data", str(empty), *common]) == 2
    assert "no non-empty text" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_cli_distill_end_to_end_and_two_processes(tiny_pair_dirs, tmp_path):
    """`minitron distill` writes a loadable student, distill.json and curves.png; the same recipe under
    `accelerate launch --multi_gpu --num_processes 2` (CPU: torchrun + gloo) trains as well."""
    s, t = tiny_pair_dirs
    common = ["--student", str(s), "--teacher", str(t), "--max-steps", "6", "--per-device-train-batch-size", "2",
              "--seq-len", "32", "--eval-samples", "4", "--logging-steps", "1", "--report-to", "none",
              "--learning-rate", "3e-3", "--save-strategy", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "recipes/distill.py", *common, "--output-dir", str(tmp_path / "one")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    acc = Path(sys.executable).parent / "accelerate"
    two = subprocess.run([str(acc), "launch", "--main_process_port", "0", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "recipes/distill.py", *common,
                          "--output-dir", str(tmp_path / "two")],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    for run in ("one", "two"):
        summary = json.loads((tmp_path / run / "distill.json").read_text())
        assert summary["after"]["eval_kd_loss"] < summary["before"]["before_kd_loss"]
        assert (tmp_path / run / "curves.png").stat().st_size > 1000
        from transformers import AutoModelForCausalLM

        assert AutoModelForCausalLM.from_pretrained(tmp_path / run / "final").config.hidden_size == 36
    s1 = json.loads((tmp_path / "one" / "distill.json").read_text())
    s2 = json.loads((tmp_path / "two" / "distill.json").read_text())
    assert s2["tokens_per_step"] == 2 * s1["tokens_per_step"]
    # 2 processes x batch 2 take the same steps as 1 process x batch 4 (token-normalised across devices)
    four = subprocess.run([sys.executable, "recipes/distill.py", *common, "--per-device-train-batch-size", "4",
                           "--output-dir", str(tmp_path / "four")], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=600)
    assert four.returncode == 0, four.stderr[-3000:]
    s4 = json.loads((tmp_path / "four" / "distill.json").read_text())
    assert s2["after"]["eval_kd_loss"] == pytest.approx(s4["after"]["eval_kd_loss"], rel=1e-4)
    w2 = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    w4 = load_file(str(tmp_path / "four" / "final" / "model.safetensors"))
    for k in w4:
        torch.testing.assert_close(w2[k], w4[k], atol=2e-5, rtol=1e-4)


def test_continuous_correction_trains_teacher_and_resumes(tmp_path):
    """Paper Fig. 4: the teacher keeps training on LM loss while the student distils from it; both
    states checkpoint and resume onto the same curve."""
    def make(sub, **kw):
        s, t = _pair()
        return _trainer(tmp_path / sub, student=s, teacher=t, max_steps=8, continuous_correction=True,
                        teacher_learning_rate=1e-3, **kw)

    full = make("a")
    t0 = [p.clone() for p in full.teacher.parameters()]
    full.train()
    assert any(not torch.equal(a, b) for a, b in zip(t0, full.teacher.parameters()))
    assert [h for h in full.state.log_history if "teacher_train_lm_loss" in h]
    part = make("b", save_strategy="steps", save_steps=100)
    part.add_callback(_StopAt(4))
    part.train()
    ckpt = tmp_path / "b" / "out" / "checkpoint-4"
    assert (ckpt / "teacher" / "optimizer.pt").exists()
    resumed = make("b", save_strategy="steps", save_steps=100)
    resumed.train(resume_from_checkpoint=str(ckpt))
    la = [h["loss"] for h in full.state.log_history if "loss" in h]
    lb = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert lb[-1] == pytest.approx(la[-1], abs=1e-5)
    for a, b in zip(full.teacher.parameters(), resumed.teacher.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.multiprocess
@pytest.mark.parametrize("streaming", [False, True])
def test_two_process_resume_continues_the_same_run(tiny_pair_dirs, tmp_path, streaming):
    """`accelerate launch --num_processes 2`, resumed from checkpoint-2 of a 4-step run, ends with the weights of the
    uninterrupted run: each rank reads the blocks it would have read next (the data position follows from the step;
    no batch before it is read again)."""
    import shutil

    s, t = tiny_pair_dirs
    common = ["--student", str(s), "--teacher", str(t), "--max-steps", "4", "--per-device-train-batch-size", "2",
              "--seq-len", "32", "--eval-samples", "2", "--logging-steps", "1", "--report-to", "none",
              "--learning-rate", "3e-3", "--save-strategy", "steps", "--save-steps", "2", "--eval-strategy", "no"]
    if streaming:  # two files: each rank streams its own, and its position goes into data_state_rank<R>.json
        from minitron_hf.data import python_docs_documents

        d = tmp_path / "stream"
        d.mkdir()
        docs = [t for _, t in python_docs_documents()[:120]]
        for i in range(2):
            (d / f"part{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[i::2]))
        common += ["--data", str(d), "--streaming", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    acc = [str(Path(sys.executable).parent / "accelerate"), "launch", "--main_process_port", "0", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "recipes/distill.py"]
    full = subprocess.run([*acc, *common, "--output-dir", str(tmp_path / "full")], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    (tmp_path / "cut").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    res = subprocess.run([*acc, *common, "--output-dir", str(tmp_path / "cut"), "--resume-from-checkpoint", "true"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    if streaming:
        assert "resuming the data stream from" in res.stderr
        assert (tmp_path / "full" / "checkpoint-2" / "data_state_rank1.json").is_file()
    else:
        assert "resuming the data at sample 8 of 16 (step 2)" in res.stderr
    w_full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    w_res = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for k in w_full:
        torch.testing.assert_close(w_res[k], w_full[k], atol=1e-6, rtol=1e-5)
