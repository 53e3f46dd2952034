"""The real embedded default model (SmolLM2-135M-Instruct) on the real default data (python-docs)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minitron_hf.data import DataConfig
from minitron_hf.lm_loss import validation_loss
from minitron_hf.pruning.config import PruneConfig
from minitron_hf.pruning.prune import run_prune

pytestmark = pytest.mark.slow

WIDTH = dict(hidden_size=432, intermediate_size=768)  # the recipe's width target


def _generate(path, prompt="What is the capital of France?"):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), model


def test_default_teacher_answers(default_model_dir):
    text, model = _generate(default_model_dir)
    assert "Paris" in text
    assert model.config.num_hidden_layers == 30 and model.config.num_key_value_heads == 3


@pytest.fixture(scope="module")
def pruned_pair(default_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("default")
    common = dict(model=str(default_model_dir), calib_samples=16, seq_len=128, batch_size=8)
    run_prune(DataConfig(), PruneConfig(output=str(root / "imp"), target=WIDTH, **common))
    run_prune(DataConfig(), PruneConfig(output=str(root / "rand"), target=WIDTH, importance="random", **common))
    return root


def test_width_pruned_default_loads_and_generates(pruned_pair):
    text, model = _generate(pruned_pair / "imp")
    assert model.config.hidden_size == 432 and model.config.head_dim == 64
    assert isinstance(text, str) and len(text.strip()) > 0
    meta = json.loads((pruned_pair / "imp" / "pruning.json").read_text())
    # about half of the non-embedding parameters
    ratio = meta["parameters"]["after"]["non_embedding"] / meta["parameters"]["before"]["non_embedding"]
    assert 0.4 < ratio < 0.55


def test_importance_beats_random_pruning(pruned_pair, default_model_dir):
    kw = dict(samples=8, seq_len=256)
    teacher = validation_loss(default_model_dir, DataConfig(), **kw)
    imp = validation_loss(pruned_pair / "imp", DataConfig(), **kw)
    rand = validation_loss(pruned_pair / "rand", DataConfig(), **kw)
    print(f"validation loss: teacher {teacher:.3f}, importance-pruned {imp:.3f}, random-pruned {rand:.3f}")
    # measured 2.01 / 5.90 / 13.87 (docs/measured.md): activation importance must keep far more of the model than
    # chance, not just a little. Random pruning is seeded by split_seed (0 here); seeds 0-7 measured 13.87, 13.61,
    # 14.20, 14.45, 13.57, 11.21, 15.73, 14.15: the smallest gap is 5.31 nats, and 2.5 is under half of it
    assert teacher < imp and rand - imp > 2.5


def test_depth_pruned_default(default_model_dir, tmp_path):
    out = tmp_path / "depth"
    run_prune(DataConfig(), PruneConfig(model=str(default_model_dir), output=str(out),
                                        target=dict(num_hidden_layers=26), val_samples=2, seq_len=128))
    meta = json.loads((out / "pruning.json").read_text())
    dropped = meta["depth"]["dropped"]
    assert len(dropped) == 4 and dropped == list(range(dropped[0], dropped[0] + 4))
    assert meta["depth"]["lm_loss"][dropped[0]] == min(meta["depth"]["lm_loss"])
    text, model = _generate(out)
    assert model.config.num_hidden_layers == 26 and len(text.strip()) > 0


def test_merge_pruned_heads_against_plain_removal(pruned_pair, default_model_dir):
    """Both head-pruning variants from the same scores, judged by validation loss (numbers printed;
    which one wins is reported in benchmarks/results/pruning_quality.md, not assumed here)."""
    scores = str(pruned_pair / "imp" / "importance")
    losses = {}
    for merge in (False, True):
        out = pruned_pair / f"heads-merge{int(merge)}"
        run_prune(DataConfig(), PruneConfig(model=str(default_model_dir), output=str(out), scores=scores,
                                            target=dict(num_attention_heads=6), merge_pruned_heads=merge))
        losses[merge] = validation_loss(out, DataConfig(), samples=8, seq_len=256)
    teacher = validation_loss(default_model_dir, DataConfig(), samples=8, seq_len=256)
    print(f"heads 9->6: teacher {teacher:.3f}, plain removal {losses[False]:.3f}, merged {losses[True]:.3f}")
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # measured 2.01 / plain 6.39 / merged 15.39: the flag must change the model materially, not by rounding; 1 nat is
    # far inside the measured 9.0 and, like the docstring, says nothing about which variant wins
    assert teacher < min(losses.values()) and abs(losses[True] - losses[False]) > 1.0


@pytest.mark.multiprocess
def test_concurrent_first_use_converts_once(tmp_path):
    """Two processes (the ranks of one `accelerate launch` on a fresh machine) ask for the default model at once:
    one converts it, the other waits for the lock and reuses the result; both get the same finished folder."""
    import os
    import subprocess
    import sys

    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "from minitron_hf.default_model import ensure_default_model\nprint(ensure_default_model())\n")
    env = {**os.environ, "MINITRON_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    folder = tmp_path / "cache" / "smollm2-135m"
    assert {o.strip().splitlines()[-1] for o, _ in outs} == {str(folder)}  # (deepspeed may print before it)
    assert sum("converting" in e for _, e in outs) == 1  # the second process did not convert again
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith((".tmp-", ".old-"))]
