"""Scale-out on CPU processes (torchrun + gloo through `accelerate launch`): FSDP2 with the chunked KD loss equals
one process of the same global batch, a killed rank stops the run and the resume continues the same curve, and
the global batch a config declares is checked before anything loads."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from safetensors.torch import load_file

from minitron_hf.distributed import DistributedConfigError, check_global_batch

pytestmark = pytest.mark.multiprocess  # ranks of accelerate launch / torchrun

ROOT = Path(__file__).parents[1]
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
FSDP2_CPU = ["--config_file", str(ROOT / "recipes/accelerate/fsdp2-cpu.yaml")]
ONE = ["--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
STEPS = 40  # long enough that a rank can be killed between checkpoint-4 and the end (about 0.2 s a step here)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, default_model_dir):
    """The tiny teacher/student pair of test_distill (real SmolLM2 tokenizer, tied embeddings)."""
    import shutil

    from conftest import tiny_model

    d = tmp_path_factory.mktemp("pair")
    for name, seed, kw in (("teacher", 0, {}), ("student", 1, dict(hidden_size=36, intermediate_size=48))):
        tiny_model("llama", vocab_size=49152, seed=seed, **kw).save_pretrained(d / name)
        for f in default_model_dir.glob("tokenizer*"):
            shutil.copy2(f, d / name / f.name)
    return d / "student", d / "teacher"


def _cmd(pair, out, launch, per_device=2, *extra, steps=STEPS, lr="3e-3"):
    s, t = pair
    return [ACCELERATE, "launch", "--main_process_port", "0", *launch, "recipes/distill.py", "--student", str(s), "--teacher", str(t),
            "--max-steps", str(steps), "--per-device-train-batch-size", str(per_device), "--seq-len", "32",
            "--eval-samples", "4", "--logging-steps", "1", "--report-to", "none", "--learning-rate", lr,
            "--save-strategy", "steps", "--save-steps", "4", "--save-total-limit", "2", "--eval-strategy", "no",
            "--output-dir", str(out), *extra]


# The equality runs use plain SGD: its update is the gradient times the learning rate, so a wrong gradient (a lost
# or doubled reduction, the tied head's share missing) shows in the weights. AdamW divides each gradient by its own
# running norm, which hides a scale error and turns float rounding in rarely updated rows into visible differences.
SGD = dict(steps=8, lr="0.5")
DDP = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
       "no"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def fsdp2_run(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2") / "out"
    return out, _run(_cmd(pair, out, FSDP2_CPU))


@pytest.fixture(scope="module")
def one_run(pair, tmp_path_factory):
    """The reference: 1 process x batch 4, the same global batch as 2 processes x 2, SGD."""
    out = tmp_path_factory.mktemp("one") / "out"
    return out, _run(_cmd(pair, out, ONE, 4, "--optim", "sgd", **SGD))


def _losses(out: Path) -> list[float]:
    state = json.loads(sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
                       .joinpath("trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def _same_weights_as_one_process(out: Path, one: Path, student: Path) -> None:
    """Every tensor's distance from the 1-process result is below 1e-3 of the distance training moved it.

    Both runs do the same float32 arithmetic except the order of the gradient sums (a reduction of two halves vs
    one batch of four): measured 2e-5 (FSDP2) and 4e-5 (ZeRO-3) of the update after 4 SGD steps, so 1e-3 leaves
    room for other machines; a gradient that lost or doubled any share would be off by a large part of it."""
    w2 = load_file(str(out / "final" / "model.safetensors"))
    w1 = load_file(str(one / "final" / "model.safetensors"))
    assert set(w2) == set(w1)  # a plain checkpoint: the tied lm_head is not written twice
    w0 = load_file(str(student / "model.safetensors"))
    for k in w1:
        moved = float((w1[k] - w0[k]).norm())
        assert moved > 0, k
        assert float((w2[k] - w1[k]).norm()) < 1e-3 * moved, k
    assert _losses(out) == pytest.approx(_losses(one), rel=1e-4)


def test_fsdp2_on_cpu_shards_both_models_and_equals_one_process(pair, fsdp2_run, one_run, tmp_path):
    """Under FSDP2 on 2 CPU processes the student and the teacher are sharded, the chunked KD loss runs with the
    gathered LM heads, checkpoints are FSDP's sharded states and final/ is a plain checkpoint; 2 processes x batch 2
    train the same weights as 1 process x batch 4 (SGD, see _same_weights_as_one_process)."""
    out, r = fsdp2_run
    assert "FSDP2 on 2 CPU processes over gloo" in r.stderr
    assert r.stderr.count("teacher sharded with FSDP2") == 2
    local = [int(x.split(" of ")[0].rsplit(" ", 1)[1]) for x in r.stderr.splitlines() if "teacher sharded" in x]
    total = int(r.stderr.split("teacher sharded with FSDP2: ")[1].split(" of ")[1].split(" ")[0])
    assert max(local) < total and sum(local) >= total  # each process holds a part, together all of it
    assert "KD loss: chunked from hidden states (LM heads gathered by FSDP2)" in r.stderr
    ckpt = out / f"checkpoint-{STEPS}"
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and (ckpt / "optimizer_0").is_dir()  # sharded states

    one, r1 = one_run
    assert "KD loss: chunked from hidden states" in r1.stderr
    sgd = tmp_path / "sgd"
    _run(_cmd(pair, sgd, FSDP2_CPU, 2, "--optim", "sgd", **SGD))
    _same_weights_as_one_process(sgd, one, pair[0])

    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out / "final")
    assert m.config.hidden_size == 36 and m.lm_head.weight is m.model.embed_tokens.weight
    s2 = json.loads((sgd / "distill.json").read_text())
    s1 = json.loads((one / "distill.json").read_text())
    assert s2["tokens_per_step"] == s1["tokens_per_step"]
    assert s2["after"]["eval_kd_loss"] == pytest.approx(s1["after"]["eval_kd_loss"], rel=1e-4)
    s40 = json.loads((out / "distill.json").read_text())
    assert s40["after"]["eval_kd_loss"] < s40["before"]["before_kd_loss"]


def test_teacher_correction_under_fsdp2_writes_a_plain_teacher(pair, tmp_path, monkeypatch):
    """`recipes/correct_teacher.py` under FSDP2 on 2 CPU processes: the baseline is evaluated inside train() (the
    model is sharded there), and final/ is gathered into a plain checkpoint with its tied head written once.
    mode=lora under FSDP is refused before any weights load."""
    t = pair[1]
    out = tmp_path / "corr"
    r = _run([ACCELERATE, "launch", "--main_process_port", "0", *FSDP2_CPU, "recipes/correct_teacher.py", "--model", str(t), "--mode", "full",
              "--max-steps", "2", "--per-device-train-batch-size", "2", "--seq-len", "32", "--eval-samples", "2",
              "--learning-rate", "1e-3", "--report-to", "none", "--save-strategy", "no", "--output-dir", str(out)])
    assert "FSDP2 on 2 CPU processes over gloo" in r.stderr
    summary = json.loads((out / "final" / "correction.json").read_text())
    assert summary["steps"] == 2 and summary["before_lm_loss"] > 0 and summary["after_lm_loss"] > 0
    before, after = load_file(str(t / "model.safetensors")), load_file(str(out / "final" / "model.safetensors"))
    assert set(after) == set(before)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    from minitron_hf.cli import main

    monkeypatch.setattr("minitron_hf.distill.correct.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp2...` sets
    assert main(["correct-teacher", "--model", str(t), "--mode", "lora", "--output-dir", str(tmp_path / "l"),
                 "--report-to", "none"]) == 2


def _rank_pid(launcher: psutil.Process, rank: int) -> int | None:
    for p in launcher.children(recursive=True):
        try:
            if p.environ().get("LOCAL_RANK") == str(rank) and "distill.py" in " ".join(p.cmdline()):
                return p.pid
        except psutil.Error:
            continue
    return None


def test_deepspeed_zero3_on_cpu_equals_one_process(pair, one_run, tmp_path):
    """DeepSpeed ZeRO-3 (the Trainer's `--deepspeed` config, 2 CPU processes over gloo): both models partitioned,
    the chunked KD loss with the LM heads gathered, the same weights as 1 process (tolerance as for FSDP2)."""
    out = tmp_path / "out"
    r = _run(_cmd(pair, out, DDP, 2, "--deepspeed", str(ROOT / "recipes/accelerate/deepspeed_zero3-cpu.json"),
                  "--optim", "sgd", **SGD))
    assert "KD loss: chunked from hidden states (LM heads gathered by ZeRO-3)" in r.stderr
    assert (out / "checkpoint-8" / "global_step8").is_dir()  # ZeRO's partitioned states
    _same_weights_as_one_process(out, one_run[0], pair[0])

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.hidden_size == 36


def _stop_all(proc: subprocess.Popen, workers: list[int]) -> None:
    """Cleanup whatever happened: the launcher and every worker it started (a test that fails must not leave
    training processes behind)."""
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()


def _workers(proc: subprocess.Popen) -> list[int]:
    return [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]


def _gone(pids: list[int]) -> bool:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return not alive


def _rank_1_after_checkpoint_4(proc: subprocess.Popen, out: Path) -> tuple[int, list[int]]:
    """Wait until the launched run has written checkpoint-4; then rank 1's pid and every worker's."""
    deadline = time.time() + 600
    while not (out / "checkpoint-4" / "minitron_checkpoint.json").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint-4 before the run ended"
        time.sleep(0.05)
    pid = _rank_pid(psutil.Process(proc.pid), 1)
    assert pid is not None
    return pid, _workers(proc)


def test_killing_one_rank_stops_the_run_and_the_resume_continues_the_curve(pair, fsdp2_run, tmp_path):
    """kill -9 of rank 1 after checkpoint-4: the launcher stops every process (no rank waits forever), exits
    non-zero, and `--resume-from-checkpoint true` ends with the uninterrupted run's weights."""
    full, _ = fsdp2_run
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(pair, out, FSDP2_CPU), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid, workers = _rank_1_after_checkpoint_4(proc, out)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        err = proc.communicate(timeout=300)[1]
        stopped_after = time.time() - killed_at
        assert _gone(workers), "a rank outlived the launcher"
    finally:
        _stop_all(proc, locals().get("workers", []))
    print(f"the run stopped {stopped_after:.1f} s after rank 1 was killed (exit code {proc.returncode})")
    assert proc.returncode != 0
    assert stopped_after < 120, f"the run took {stopped_after:.0f} s to stop after a rank was killed"
    assert not (out / "final").exists()
    assert not any(p.name.startswith(("rank", "final")) for p in out.iterdir()), "debris"
    assert "-9" in err or "SIGKILL" in err or "Signal 9" in err, err[-2000:]

    r = _run(_cmd(pair, out, FSDP2_CPU, 2, "--resume-from-checkpoint", "auto"))  # what a requeued job passes
    assert "resuming the data at sample" in r.stderr
    w_full = load_file(str(full / "final" / "model.safetensors"))
    w_res = load_file(str(out / "final" / "model.safetensors"))
    for k in w_full:
        torch.testing.assert_close(w_res[k], w_full[k], atol=1e-6, rtol=1e-5)
    assert _losses(out)[-1] == pytest.approx(_losses(full)[-1], rel=1e-5)


def test_a_hung_rank_times_out_the_others(pair, tmp_path):
    """A rank that stops answering without dying (SIGSTOP: a stuck device, a lost node) fails the other rank's next
    collective after --ddp-timeout seconds, and the launcher then stops the job: nothing waits forever."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(pair, out, FSDP2_CPU, 2, "--ddp-timeout", "15"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        pid, workers = _rank_1_after_checkpoint_4(proc, out)
        os.kill(pid, signal.SIGSTOP)
        stopped_at = time.time()
        err = proc.communicate(timeout=300)[1]
        waited = time.time() - stopped_at
        time.sleep(1)
        assert _gone(workers), "a rank outlived the launcher"
    finally:
        _stop_all(proc, locals().get("workers", []))
    print(f"the job ended {waited:.1f} s after rank 1 hung (--ddp-timeout 15; exit code {proc.returncode})")
    assert proc.returncode != 0
    assert 10 < waited < 200, waited
    assert "timed out" in err.lower() or "timeout" in err.lower(), err[-3000:]


def test_global_batch_size_is_checked_before_anything_loads(pair, tmp_path, capsys, monkeypatch):
    ok = SimpleNamespace(global_batch_size=1152, per_device_train_batch_size=1, gradient_accumulation_steps=18)
    check_global_batch(ok, world_size=64)  # the paper's Llama-3.1 distillation: 1 x 18 x 64 GPUs
    with pytest.raises(DistributedConfigError, match=r"1 x gradient_accumulation_steps=18 x 8 processes = 144; "
                                                     r"set gradient_accumulation_steps=144"):
        check_global_batch(ok, world_size=8)
    with pytest.raises(DistributedConfigError, match="no gradient_accumulation_steps fits"):
        check_global_batch(SimpleNamespace(global_batch_size=768, per_device_train_batch_size=5,
                                           gradient_accumulation_steps=1), world_size=1)
    check_global_batch(SimpleNamespace(global_batch_size=None, per_device_train_batch_size=3,
                                       gradient_accumulation_steps=1))

    from minitron_hf.cli import main

    monkeypatch.setattr("minitron_hf.distill.run.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as `accelerate launch --num_processes 2` sets it in each process
    s, t = pair
    code = main(["distill", "--student", str(s), "--teacher", str(t), "--output-dir", str(tmp_path / "o"),
                 "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "2",
                 "--global-batch-size", "16", "--report-to", "none"])
    assert code == 2
    err = capsys.readouterr().err
    assert "global_batch_size=16 but per_device_train_batch_size=2 x gradient_accumulation_steps=2 x 2 processes " \
           "= 8; set gradient_accumulation_steps=4" in err
    assert not (tmp_path / "o").exists()


def test_every_stage_of_minitron_run_under_two_processes(pair, tmp_path, default_model_dir):
    """`accelerate launch --num_processes 2 recipes/run.py` with every section: teacher correction, importance,
    pruning, distillation and alignment (SFT + a round of RPO) use both processes; data, evaluation and export run
    on the main process while the other waits; the run ends with every stage done and nothing hangs."""
    import yaml
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from conftest import save_with_tokenizer, tiny_config

    torch.manual_seed(0)
    rm = save_with_tokenizer(AutoModelForSequenceClassification.from_config(
        tiny_config("llama", vocab_size=49152, num_labels=1)), tmp_path / "rm", default_model_dir)
    out = tmp_path / "run"
    cfg = {
        "output_dir": str(out), "teacher": str(pair[1]), "data": "python-docs", "seq_len": 32, "eval_samples": 4,
        "report_to": "none",
        "correct": {"mode": "full", "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-4},
        "prune": {"target": {"hidden_size": 36, "intermediate_size": 48, "num_hidden_layers": 3},
                  "calib_samples": 4, "val_samples": 2, "batch_size": 2},
        "distill": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 3e-3, "logging_steps": 1,
                    "save_strategy": "steps", "save_steps": 1, "disable_tqdm": True},
        "align": {"sft": [{"data": "builtin:math-code", "max_samples": 4, "max_steps": 1,
                           "per_device_train_batch_size": 1, "max_length": 64}],
                  "rounds": {"rounds": 1, "samples": 2, "train_prompts": 4, "heldout_prompts": 2, "max_new_tokens": 6,
                             "max_steps": 1, "per_device_train_batch_size": 1, "max_length": 96,
                             "reward": f"model:{rm}", "generation_backend": "transformers"}},
        "evaluate": {"max_new_tokens": 4},
        "export": {"formats": ["hf"]},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([ACCELERATE, "launch", "--main_process_port", "0", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "recipes/run.py", str(path)],
                       cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=1200)
    assert r.returncode == 0, r.stderr[-5000:]
    stages = ("data", "correct", "importance", "prune", "distill", "align", "evaluate", "export")
    for s in stages:
        assert json.loads((out / s / "done.json").read_text())["stage"] == s
    align = json.loads((out / "align" / "done.json").read_text())["result"]
    assert [x["round"] for x in align["rounds"]["rounds"]] == [0, 1] and "heldout_reward" in align["rounds"]["rounds"][1]
    # both processes trained: each trainer saw a world of 2 (the distilled tokens count both processes' batches)
    summary = json.loads((out / "distill" / "done.json").read_text())["result"]["summary"]
    assert summary["tokens_per_step"] == 2 * 2 * 32
    assert "heldout.jsonl" in {p.name for p in (out / "align" / "rounds" / "round_1").iterdir()}
    ev = json.loads((out / "evaluate" / "evaluation.json").read_text())
    assert set(ev["models"]) == {"teacher", "teacher (corrected)", "pruned", "distilled", "aligned"}
    exported = AutoModelForCausalLM.from_pretrained(out / "export" / "hf")
    assert exported.config.hidden_size == 36
    assert "## Alignment" in (out / "report.md").read_text()


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_path):
    from minitron_hf.resume import parse_resume_flag, resolve_resume

    assert parse_resume_flag("AUTO") == "auto"
    assert resolve_resume("auto", tmp_path) is None  # nothing to resume: a fresh start, not an error
    (tmp_path / "checkpoint-3").mkdir()  # partial (no marker, no weights): never resumed from
    assert resolve_resume("auto", tmp_path) is None
