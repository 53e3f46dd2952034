"""Teacher correction: each mode trains exactly the parameters it should, and the result is vanilla."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Trainer

from minitron_hf.data import collate_blocks
from minitron_hf.distill.correct import finalize_mode, prepare_mode
from minitron_hf.distill.trainer import TrainArgs

from conftest import bigram_data, tiny_model


def _train(model, tmp_path, steps=4):
    args = TrainArgs(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=steps,
                     report_to="none", save_strategy="no", disable_tqdm=True, warmup_steps=1,
                     lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 1e-3})
    trainer = Trainer(model=model, args=args, train_dataset=bigram_data(), data_collator=collate_blocks)
    trainer.train()
    return trainer.state.log_history


@pytest.mark.parametrize("mode", ["full", "norm", "lora"])
def test_mode_changes_only_its_parameters(mode, tmp_path):
    base = tiny_model("qwen3")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = prepare_mode(base, mode, lora_r=4, lora_alpha=8)
    _train(model, tmp_path)
    plain = finalize_mode(model, mode)
    after = plain.state_dict()
    assert set(after) == set(before)  # LoRA merged away: a vanilla state dict
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    norms = {k for k in before if "norm" in k.split(".")[-2]}
    projections = {k for k in before if k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj")}
    if mode == "full":
        assert norms & changed and projections & changed and "model.embed_tokens.weight" in changed
    elif mode == "norm":
        assert changed and changed <= norms
    else:
        assert changed and changed <= projections
    plain.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert all(torch.equal(reloaded.state_dict()[k], after[k]) for k in after)
