"""Nemotron-H (hybrid Mamba2 / attention / MLP): trimming against a naive reference rebuilt head by head, the
ModelOpt ranking of Mamba heads and head-dim channels, the importance probes, depth pruning of the layer pattern,
the refusals, and `minitron prune` end to end. (The family-parametrized suites -- test_arch_conformance,
test_trim, test_depth, test_prune_cli -- run it too.)"""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from minitron_hf.arch import UnsupportedModelError, count_parameters, family_of
from minitron_hf.pruning.depth import dropped_layers
from minitron_hf.pruning.importance import random_importance
from minitron_hf.pruning.trim import (PruneTarget, PruningConfigError, kept_layers_config, make_plan, parameter_counts,
                                     resolve_target)

from conftest import check_hybrid_importance, naive_hybrid_reference, save_with_tokenizer, tiny_config, tiny_model

TYPES = ["linear_attention", "linear_attention", "mlp", "full_attention"]  # conftest's tiny pattern


def _model(**kw):
    model = tiny_model("nemotron_h", use_bias=True, mlp_bias=True, **kw)
    with torch.no_grad():  # HF initialises biases to zero: a mis-sliced zero bias would go unnoticed
        for n, p in model.named_parameters():
            if n.endswith("bias") and "dt_bias" not in n:
                # at the weights' scale: larger biases (every token gets them) leave relu2 neurons that never fire
                p.copy_(torch.randn_like(p) * 0.02)
    return model


def _ids(seed=3, batch=2, seq=20):
    return torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


TARGET = dict(hidden_size=40, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              mamba_num_heads=20, mamba_head_dim=3, drop_layers=[1])


def test_trim_equals_naive_reference(tmp_path, prune_tiny):
    model = _model()
    plan, pruned = prune_tiny(model, tmp_path, TARGET)
    cfg = pruned.config
    assert cfg.layers_block_type == ["linear_attention", "mlp", "full_attention"] and cfg.num_hidden_layers == 3
    assert (cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.hidden_size) == (20, 3, 40)
    ref = naive_hybrid_reference(model, plan)
    assert not [n for n, p in ref.named_parameters() if p.isnan().any()]
    got = dict(pruned.named_parameters())
    for name, t in ref.named_parameters():
        assert got[name].shape == t.shape and torch.equal(got[name], t), name
    torch.testing.assert_close(_logits(pruned, _ids()), _logits(ref, _ids()), atol=1e-5, rtol=1e-5)
    assert count_parameters(cfg)["total"] == sum(p.numel() for p in pruned.parameters())


def test_keep_everything_only_permutes_mamba(tmp_path, prune_tiny):
    model = _model()
    c = model.config
    plan, keep = prune_tiny(model, tmp_path, dict(mamba_num_heads=c.mamba_num_heads, mamba_head_dim=c.mamba_head_dim,
                                                  hidden_size=c.hidden_size))
    heads = plan.axes[0]["mamba_heads"]
    assert sorted(heads.tolist()) == list(range(32)) != heads.tolist()  # really permuted
    assert sorted(heads[:16].tolist()) == list(range(16))  # within their group
    chans = plan.axes[0]["mamba"].view(32, 4) % 4
    assert (chans == chans[0]).all() and chans[0].tolist() != [0, 1, 2, 3]  # one channel order in every head
    torch.testing.assert_close(_logits(keep, _ids()), _logits(model, _ids()), atol=1e-5, rtol=1e-5)


def test_mamba_ranking_follows_modelopt():
    """Head-dim channel p: L2 over heads of the channel scores; head h: L2 over its kept channels, ranked within its
    group (ModelOpt's _estimate_head_and_head_dim_rankings), written out with loops."""
    c = tiny_config("nemotron_h")
    imp = random_importance(c, seed=7)
    new, drop = resolve_target(c, PruneTarget.from_dict(dict(mamba_num_heads=10, mamba_head_dim=2)))
    plan = make_plan(c, imp, new, drop)
    for l in (0, 1):
        s = imp.extra["mamba"][l].view(32, 4)
        dim_score = [sum(float(s[h, p]) ** 2 for h in range(32)) ** 0.5 for p in range(4)]
        dims = sorted(range(4), key=lambda p: -dim_score[p])[:2]
        head_score = [sum(float(s[h, p]) ** 2 for p in dims) ** 0.5 for h in range(32)]
        heads = []
        for g in range(2):
            heads += sorted(range(16 * g, 16 * g + 16), key=lambda h: -head_score[h])[:5]
        assert plan.axes[l]["mamba_heads"].tolist() == heads
        assert plan.axes[l]["mamba"].tolist() == [h * 4 + p for h in heads for p in dims]
    assert 2 not in plan.axes and 3 not in plan.axes  # attention and MLP layers have no Mamba axes


@pytest.mark.parametrize("aggregation", ["l2_mean", "max_l2"])
def test_importance_probes_match_naive(aggregation):
    ids = _ids(0, batch=4, seq=16)
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[1, 11:] = 0  # padding counts nowhere
    imp = check_hybrid_importance(_model(), ids, mask, aggregation)
    for l, name in ((0, "mamba"), (1, "mamba"), (2, "neurons"), (3, "heads")):
        assert (imp.score(name)[l] > 0).all()  # every channel of every probe fired


def test_depth_drop_rewrites_pattern_and_equals_skipping(tmp_path, prune_tiny):
    model = _model(num_hidden_layers=6)  # M M - * M M
    ids = _ids()
    full = _logits(model, ids)
    kept = ["linear_attention", "mlp", "full_attention", "linear_attention"]
    with dropped_layers(model, [1, 4]):
        assert model.config.layers_block_type == kept and model.config.num_hidden_layers == 4
        skipped = _logits(model, ids)
    assert model.config.layers_block_type == (TYPES * 2)[:6] and torch.equal(_logits(model, ids), full)
    _, pruned = prune_tiny(model, tmp_path, dict(drop_layers=[1, 4]))
    assert pruned.config.layers_block_type == kept
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["layers_block_type"] == kept
    torch.testing.assert_close(_logits(pruned, ids), skipped, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(skipped, full)
    # transformers 5.19 cannot run a Nemotron-H without attention layers (its hybrid cache asks one for the sequence
    # length): dropping every attention layer is refused, naming them
    with pytest.raises(PruningConfigError, match=r"drops every attention layer \(\[3\]\)"):
        prune_tiny(model, tmp_path, dict(drop_layers=[1, 3]), name="no-attention")


@pytest.mark.parametrize("target, match", [
    (dict(mamba_num_heads=15), r"mamba_num_heads=15 is not a multiple of n_groups=2.*Nearest allowed: 14 or 16"),
    (dict(mamba_head_dim=0), "mamba_head_dim=0"),
    (dict(mamba_num_heads=34), "between 1 and the source's mamba_num_heads=32"),
    (dict(num_attention_heads=5), "not divisible by num_key_value_heads=2"),
    (dict(num_local_experts=2), "cannot be pruned along num_local_experts"),
])
def test_bad_targets_refused(target, match):
    with pytest.raises(PruningConfigError, match=match):
        resolve_target(tiny_config("nemotron_h"), PruneTarget.from_dict(target))


def test_moe_mtp_and_sequential_refused_by_name(tmp_path):
    moe = AutoConfig.for_model("nemotron_h", layers_block_type=["linear_attention", "moe", "full_attention", "mlp"])
    with pytest.raises(UnsupportedModelError, match=r"layers \[1\] are 'moe' layers"):
        family_of(moe)
    legacy = tiny_config("nemotron_h").to_dict()
    legacy.pop("layers_block_type")
    with pytest.raises(UnsupportedModelError, match=r"layers \[2\] are 'moe' layers"):
        family_of({**legacy, "hybrid_override_pattern": "M-E*"})
    family_of({**legacy, "hybrid_override_pattern": "M-M*"})  # the legacy pattern of a Hub config.json is read
    with pytest.raises(UnsupportedModelError, match="tie_word_embeddings=True"):
        family_of(tiny_config("nemotron_h", tie_word_embeddings=True))
    with pytest.raises(UnsupportedModelError, match="attention_head_dim=64 differs from head_dim=16"):
        family_of(tiny_config("nemotron_h", attention_head_dim=64))
    with pytest.raises(UnsupportedModelError, match="num_nextn_predict_layers=1"):
        family_of(tiny_config("nemotron_h", num_nextn_predict_layers=1))
    from minitron_hf.pruning.layerwise import LayerwiseModel, SequentialError

    tiny_model("nemotron_h").save_pretrained(tmp_path / "m")
    with pytest.raises(SequentialError, match="model_type='nemotron_h' is a hybrid"):
        LayerwiseModel(tmp_path / "m", torch.float32, torch.device("cpu"))


@pytest.mark.slow
def test_minitron_prune_cli(tmp_path, default_model_dir):
    from minitron_hf.cli import main

    model = _model(vocab_size=49152)
    src = save_with_tokenizer(model, tmp_path / "src", default_model_dir)
    out = tmp_path / "out"
    assert main(["prune", "--model", str(src), "--output", str(out), "--calib-samples", "4", "--seq-len", "32",
                 "--batch-size", "2", "--val-samples", "2", "--target", "mamba_num_heads=16",
                 "--target", "mamba_head_dim=2", "--target", "hidden_size=32", "--target",
                 "num_hidden_layers=3"]) == 0
    pruned = AutoModelForCausalLM.from_pretrained(out)
    c = pruned.config
    assert (c.mamba_num_heads, c.mamba_head_dim, c.hidden_size, c.num_hidden_layers) == (16, 2, 32, 3)
    meta = json.loads((out / "pruning.json").read_text())
    dropped = meta["depth"]["dropped"]
    assert len(dropped) == 1 and c.layers_block_type == [t for i, t in enumerate(TYPES) if i not in dropped]
    assert meta["parameters"]["after"]["total"] == sum(p.numel() for p in pruned.parameters())
    assert len(meta["depth"]["lm_loss"]) == 4
    # what the other ranks of a multi-process run record, from the target and the kept layers alone (not from the
    # written config, which a filesystem the ranks do not share hides from them): the same counts
    new, _ = resolve_target(model.config, PruneTarget.from_dict({"mamba_num_heads": 16, "mamba_head_dim": 2,
                                                                 "hidden_size": 32, "num_hidden_layers": 3}))
    kept = [i for i in range(4) if i not in dropped]
    assert parameter_counts(model.config, kept_layers_config(model.config, new, kept)) == meta["parameters"]


def test_composed_plan_equals_two_step_surgery(tmp_path):
    """Iterative pruning composes plans (PrunePlan.then): the Mamba heads and channels of the composed plan, applied
    to the source, write the same tensors as two surgeries in a row."""
    from safetensors.torch import load_file

    from minitron_hf.pruning.trim import trim_checkpoint

    model = _model()
    model.save_pretrained(tmp_path / "src")
    cfg = model.config
    new1, drop1 = resolve_target(cfg, PruneTarget.from_dict(dict(mamba_num_heads=24, mamba_head_dim=3, hidden_size=40,
                                                                 drop_layers=[1])))
    plan1 = make_plan(cfg, random_importance(cfg, seed=1), new1, drop1)
    (tmp_path / "a").mkdir()
    trim_checkpoint(tmp_path / "src", tmp_path / "a", plan1, progress=False)
    cfg1 = type(cfg).from_dict(plan1.new_config)
    new2, drop2 = resolve_target(cfg1, PruneTarget.from_dict(dict(mamba_num_heads=10, mamba_head_dim=2)))
    plan2 = make_plan(cfg1, random_importance(cfg1, seed=2), new2, drop2)
    (tmp_path / "b").mkdir()
    trim_checkpoint(tmp_path / "a", tmp_path / "b", plan2, progress=False)
    both = plan1.then(plan2)
    assert list(both.axes) == [0] and both.axes[0]["mamba_heads"].shape == (10,)
    assert both.axes[0]["mamba"].shape == (20,)
    (tmp_path / "c").mkdir()
    trim_checkpoint(tmp_path / "src", tmp_path / "c", both, progress=False)
    b, c = load_file(tmp_path / "b" / "model.safetensors"), load_file(tmp_path / "c" / "model.safetensors")
    assert set(b) == set(c) and all(torch.equal(b[n], c[n]) for n in b)
    assert "axes" in json.loads(json.dumps(both.to_json()))  # the record pruning.json keeps


def test_forward_flops_count_attention_layers_only():
    from minitron_hf.arch import forward_flops

    c = tiny_config("nemotron_h", num_hidden_layers=8)  # M M - * M M - *: 2 attention layers of 8
    n = count_parameters(c)
    q_width, tokens = c.num_attention_heads * c.head_dim, 10
    matmul = n["non_embedding"] + c.vocab_size * c.hidden_size
    expect = 2.0 * matmul * tokens + 4.0 * 2 * q_width * tokens * (tokens + 1) / 2
    assert forward_flops(c, tokens) == pytest.approx(expect, rel=1e-12)
