"""RPO loss and trainer: values against hand-written formulas, DPO equivalence, gradients, columns."""

import copy
import math

import pytest
import torch
from datasets import Dataset

from conftest import save_with_tokenizer, tiny_model
from minitron_hf.alignment.errors import AlignmentError
from minitron_hf.alignment.rpo import RPOConfig, RPOTrainer, rpo_loss


def _sig(x):
    return 1 / (1 + math.exp(-x))


def naive_rpo(a: float, b: float, kind: str) -> float:
    """NeMo-Aligner's RPO losses written out with scalars."""
    pa, pb = _sig(a), _sig(b)
    if kind == "rpo_bwd_kl":
        return pb * math.log(pb / pa) + (1 - pb) * math.log((1 - pb) / (1 - pa))
    if kind == "rpo_fwd_kl":
        return pa * math.log(pa / pb) + (1 - pa) * math.log((1 - pa) / (1 - pb))
    return (a - b) ** 2


@pytest.mark.parametrize("kind", ["rpo_bwd_kl", "rpo_fwd_kl", "rpo_sq"])
def test_rpo_loss_values_and_gradients_match_the_formula(kind):
    a = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, -1.5, 0.4, 0.7, -2.0], dtype=torch.float64)
    got = rpo_loss(a, b, kind)
    want = [naive_rpo(x, y, kind) for x, y in zip(a.tolist(), b.tolist())]
    assert got.tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)
    got.sum().backward()
    eps = 1e-6  # central differences of the scalar formula
    fd = [(naive_rpo(x + eps, y, kind) - naive_rpo(x - eps, y, kind)) / (2 * eps) for x, y in zip(a.tolist(), b.tolist())]
    assert a.grad.tolist() == pytest.approx(fd, rel=1e-6, abs=1e-8)
    # zero exactly when the policy's gap equals the reward gap
    assert rpo_loss(b.clone(), b, kind).abs().max().item() < 1e-12


def test_rpo_bwd_kl_is_dpo_sigmoid_when_sigmoid_b_is_one():
    a = torch.linspace(-4, 4, 9, dtype=torch.float64)
    b = torch.full_like(a, 60.0)  # sigmoid(60) == 1 in float64
    assert torch.allclose(rpo_loss(a, b, "rpo_bwd_kl"), -torch.nn.functional.logsigmoid(a), atol=1e-12)


def test_bad_loss_name():
    with pytest.raises(AlignmentError, match="rpo_loss='dpo' is not one of rpo_bwd_kl"):
        rpo_loss(torch.zeros(1), torch.zeros(1), "dpo")
    with pytest.raises(AlignmentError, match="rpo_loss"):
        RPOConfig(output_dir="/tmp/x", rpo_loss="dpo", report_to=[])


def _rows(n=4, gap=1.0):
    prompts = ["Name a Python keyword.", "What does len return?", "Say hello in lowercase.", "Count to three."]
    chosen = [" def", " the number of items", " hello", " one two three"]
    rejected = [" banana", " a list", " HELLO", " four"]
    return [{"prompt": prompts[i % 4], "chosen": chosen[i % 4], "rejected": rejected[i % 4],
             "chosen_reward": 0.5 + gap, "rejected_reward": 0.5} for i in range(n)]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, default_model_dir):
    d = tmp_path_factory.mktemp("rpo") / "policy"
    save_with_tokenizer(tiny_model("llama", vocab_size=49152), d, default_model_dir)
    return d


def _trainer(tiny_policy, tmp_path, rows, cls=RPOTrainer, cfg_cls=RPOConfig, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy)
    ref = AutoModelForCausalLM.from_pretrained(tiny_policy)
    with torch.no_grad():  # make the policy differ from the reference so log-ratios are not all zero
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = cfg_cls(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_length=64, report_to=[],
                   logging_steps=1, save_strategy="no", **kw)
    return cls(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)


def _batch(trainer):
    dl = trainer.get_train_dataloader()
    return trainer._prepare_inputs(next(iter(dl)))


def test_reward_columns_survive_pruning_and_collation(tiny_policy, tmp_path):
    rows = _rows(4)
    rows[1]["chosen_reward"], rows[1]["rejected_reward"] = 3.0, -1.0
    trainer = _trainer(tiny_policy, tmp_path, rows)
    batch = _batch(trainer)
    assert {"input_ids", "completion_mask", "chosen_reward", "rejected_reward"} <= set(batch)
    assert batch["chosen_reward"].shape == (2,)
    seen = sorted(batch["chosen_reward"].tolist() + batch["rejected_reward"].tolist())
    assert all(v in (-1.0, 0.5, 1.5, 3.0) for v in seen)


def test_rpo_with_certain_reward_gap_equals_dpo_sigmoid(tiny_policy, tmp_path):
    """With eta * gap huge, sigmoid(b) = 1 and RPO (bwd KL) must give DPOTrainer's sigmoid loss on the same batch."""
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    rpo = _trainer(tiny_policy, tmp_path / "r", _rows(4), eta=100.0, beta=0.2)
    torch.manual_seed(0)
    dpo = _trainer(tiny_policy, tmp_path / "d", _rows(4), cls=DPOTrainer, cfg_cls=DPOConfig, beta=0.2,
                   use_cpu=True, bf16=False)
    dpo.model.load_state_dict(rpo.model.state_dict())
    batch = _batch(rpo)
    dpo_batch = {k: v for k, v in batch.items() if k not in ("chosen_reward", "rejected_reward")}
    with torch.no_grad():
        got = rpo.compute_loss(rpo.model, dict(batch)).item()
        want = dpo.compute_loss(dpo.model, dict(dpo_batch)).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert abs(got - math.log(2)) > 1e-4  # the policy differs from the reference: not the trivial value


def test_loss_against_a_naive_sequence_level_reference(tiny_policy, tmp_path):
    """The trainer's loss equals rpo_loss on log-probs summed over completion tokens, computed by hand."""
    trainer = _trainer(tiny_policy, tmp_path, _rows(4), beta=0.3, eta=0.7, rpo_loss="rpo_fwd_kl")
    batch = _batch(trainer)

    def seq_logps(model):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        lp = torch.log_softmax(logits.double(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        return (lp * batch["completion_mask"][:, 1:]).sum(1).chunk(2)

    with torch.no_grad():
        (pc, pr), (rc, rr) = seq_logps(trainer.model), seq_logps(trainer.ref_model)
        a = 0.3 * ((pc - rc) - (pr - rr))
        b = 0.7 * (batch["chosen_reward"] - batch["rejected_reward"]).double()
        want = sum(naive_rpo(x, y, "rpo_fwd_kl") for x, y in zip(a.tolist(), b.tolist())) / len(a)
        got = trainer.compute_loss(trainer.model, dict(batch)).item()
    assert got == pytest.approx(want, rel=1e-4)


def test_gradients_reach_only_the_policy_and_training_runs(tiny_policy, tmp_path):
    trainer = _trainer(tiny_policy, tmp_path, _rows(8), sft_weight=0.5, max_steps=2, learning_rate=1e-3)
    ref_before = copy.deepcopy(trainer.ref_model.state_dict())
    loss = trainer.compute_loss(trainer.model, _batch(trainer))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    assert all(p.grad is None for p in trainer.ref_model.parameters())
    trainer.model.zero_grad()
    out = trainer.train()
    assert math.isfinite(out.training_loss)
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"preference_loss", "sft_loss", "reward_gap", "rewards/margins"} <= logged
    assert all(torch.equal(v, trainer.ref_model.state_dict()[k]) for k, v in ref_before.items())


def test_bad_datasets_are_named(tiny_policy, tmp_path):
    rows = _rows(4)
    for r in rows:
        del r["rejected_reward"]
    with pytest.raises(AlignmentError, match="missing column\\(s\\) rejected_reward"):
        _trainer(tiny_policy, tmp_path, rows)
    rows = _rows(4)
    rows[2]["chosen_reward"] = float("nan")
    with pytest.raises(AlignmentError, match="row 2 has chosen_reward=nan"):
        _trainer(tiny_policy, tmp_path, rows)


def test_align_rpo_cli(tiny_policy, tmp_path, capsys):
    import json

    from minitron_hf.cli import main

    rows = _rows(4)
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["align", "rpo", "--model", str(tiny_policy), "--data", str(data), "--output-dir", str(tmp_path / "out"),
            "--max-steps", "1", "--per-device-train-batch-size", "2", "--report-to", "none", "--save-strategy", "no"]
    assert main(argv) == 0
    rec = json.loads((tmp_path / "out" / "rpo.json").read_text())
    assert rec["pairs"] == 4 and rec["steps"] == 1 and (tmp_path / "out" / "final" / "config.json").exists()
    assert main(argv) == 2 and "exists; set overwrite=true" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "chosen_reward"}) + "\n" for r in rows))
    assert main(argv[:4] + ["--data", str(bad), "--output-dir", str(tmp_path / "o2")] + argv[8:]) == 2
    assert "data: missing column(s) chosen_reward" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_precomputed_reference_log_probs_give_the_same_loss(tiny_policy, tmp_path):
    """DPOTrainer's precompute path (reference log-probs stored as dataset columns) feeds RPO unchanged."""
    torch.manual_seed(0)
    live = _trainer(tiny_policy, tmp_path / "a", _rows(4), beta=0.3, eta=0.5)
    torch.manual_seed(0)
    pre = _trainer(tiny_policy, tmp_path / "b", _rows(4), beta=0.3, eta=0.5, precompute_ref_log_probs=True)
    pre.model.load_state_dict(live.model.state_dict())
    batch = _batch(pre)
    assert {"ref_chosen_logps", "ref_rejected_logps", "chosen_reward"} <= set(batch)
    live_batch = {k: v for k, v in batch.items() if not k.startswith("ref_")}
    with torch.no_grad():
        assert pre.compute_loss(pre.model, dict(batch)).item() == pytest.approx(
            live.compute_loss(live.model, live_batch).item(), rel=1e-5)
    with pytest.raises(AlignmentError, match="average_log_probs does not work with precompute_ref_log_probs"):
        _trainer(tiny_policy, tmp_path / "c", _rows(4), precompute_ref_log_probs=True, average_log_probs=True)
