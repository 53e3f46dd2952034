"""Checkpoint surgery on tiny random models of every supported architecture, against a naive
reference that rebuilds the pruned model head by head and neuron by neuron."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron_hf.arch import UnsupportedModelError, count_parameters, family_of
from minitron_hf.pruning.importance import random_importance
from minitron_hf.pruning.compensation.head_merge import merge_heads
from minitron_hf.pruning.trim import PruneTarget, PruningConfigError, make_plan, resolve_target, trim_checkpoint

from conftest import mlp_target, naive_reference, seeded_logits, tiny_model


def test_keep_everything_only_reorders(model_type, tmp_path, prune_tiny):
    model = tiny_model(model_type)
    c = model.config
    f = family_of(c).mlp_field
    plan, pruned = prune_tiny(model, tmp_path, {"hidden_size": c.hidden_size, f: getattr(c, f),
                                                "num_attention_heads": c.num_attention_heads,
                                                "num_key_value_heads": c.num_key_value_heads})
    assert not torch.equal(plan.hidden, torch.arange(c.hidden_size))  # channels really moved
    torch.testing.assert_close(seeded_logits(pruned), seeded_logits(model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("target", [
    dict(hidden_size=40, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3),
    dict(num_attention_heads=3, num_key_value_heads=1, drop_layers=[0, 2]),
    dict(intermediate_size=40),
])
def test_pruned_matches_naive_reference_and_round_trips(model_type, tmp_path, target, prune_tiny):
    model = tiny_model(model_type)
    if "num_hidden_layers" in target:  # depth given as a count: choose explicitly here
        target = {**target, "drop_layers": [1]}
        target.pop("num_hidden_layers")
    plan, pruned = prune_tiny(model, tmp_path, mlp_target(model_type, target))
    ref = naive_reference(model, plan)
    torch.testing.assert_close(seeded_logits(pruned), seeded_logits(ref), atol=1e-5, rtol=1e-5)
    # vanilla from_pretrained of what we wrote, again: identical logits
    pruned.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()
    assert torch.equal(seeded_logits(again), seeded_logits(pruned))
    # analytic parameter count from the config equals the real count
    n_real = sum(p.numel() for p in pruned.parameters())
    assert count_parameters(pruned.config)["total"] == n_real
    # GQA shapes and explicit head_dim
    cfg = pruned.config
    assert cfg.head_dim == model.config.head_dim
    # the first attention module (a hybrid Nemotron-H: the mixer of its first full_attention block)
    attn = next((l.mixer for l in pruned.model.layers if getattr(l, "block_type", None) == "full_attention"),
                None) or pruned.model.layers[0].self_attn
    if model_type == "phi3":
        assert attn.qkv_proj.weight.shape == ((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim,
                                              cfg.hidden_size)
    else:
        assert attn.q_proj.weight.shape == (cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size)
        assert attn.k_proj.weight.shape == (cfg.num_key_value_heads * cfg.head_dim, cfg.hidden_size)
    assert attn.o_proj.weight.shape == (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["head_dim"] == model.config.head_dim


def test_query_heads_pruned_within_groups_by_importance(tmp_path, prune_tiny):
    model = tiny_model("llama")
    imp = random_importance(model.config, seed=4)
    # make group 1 clearly the most important and, inside every group, head r-1 the least
    imp.heads[:, 3:6] += 10
    imp.heads[:, [2, 5]] = -1
    plan, _ = prune_tiny(model, tmp_path, dict(num_attention_heads=2, num_key_value_heads=1), importance=imp)
    for l in plan.layers:
        assert plan.kv_heads[l].tolist() == [1]
        assert sorted(plan.heads[l].tolist()) == sorted(torch.tensor([3, 4])[torch.argsort(imp.heads[l, 3:5], descending=True)].tolist())


def test_sharded_output_loads(tmp_path, prune_tiny):
    model = tiny_model("mistral")
    _, pruned = prune_tiny(model, tmp_path, dict(intermediate_size=64), max_shard_bytes=20_000)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    assert sum(p.numel() for p in pruned.parameters()) == count_parameters(pruned.config)["total"]


def test_merge_pruned_heads_matches_formula(tmp_path, prune_tiny):
    model = tiny_model("llama")
    imp = random_importance(model.config, seed=5)
    plan, pruned = prune_tiny(model, tmp_path, dict(num_attention_heads=4, num_key_value_heads=2), importance=imp,
                              merge=True)
    hd = plan.head_dim
    l = plan.layers[0]
    pairs = plan.compensations["merge_pruned_heads"][l]
    # 3 heads per group pruned to 2: K=2, L=3 -> only rank-2 head takes rank-3's residual (2K-i+1 = 3 for i = 2)
    assert len(pairs) == 2
    wq = model.model.layers[l].self_attn.q_proj.weight
    for kept, pruned_h in pairs:
        order = torch.argsort(imp.heads[l, (kept // 3) * 3:(kept // 3) * 3 + 3], descending=True).tolist()
        assert [kept % 3, pruned_h % 3] == order[1:3]
        new_pos = plan.heads[l].tolist().index(kept)
        expect = 2 * wq[kept * hd:(kept + 1) * hd] - wq[pruned_h * hd:(pruned_h + 1) * hd]
        got = pruned.model.layers[0].self_attn.q_proj.weight[new_pos * hd:(new_pos + 1) * hd]
        torch.testing.assert_close(got, expect[:, plan.hidden])


def test_merge_heads_helper_on_columns():
    t = torch.arange(24.0).view(2, 12)  # 3 heads of head_dim 4 along dim 1
    out = merge_heads(t, [(0, 2)], 4, 1)
    torch.testing.assert_close(out[:, :4], 2 * t[:, :4] - t[:, 8:])
    torch.testing.assert_close(out[:, 4:], t[:, 4:])


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("target, match", [
    (dict(hidden_size=64), "between 1 and the source's hidden_size=48"),
    (dict(intermediate_size=0), "intermediate_size=0"),
    (dict(num_attention_heads=5), "not divisible by num_key_value_heads=2"),
    (dict(num_attention_heads=4, num_key_value_heads=1), "needs 4 query heads per KV group"),
    (dict(num_hidden_layers=0), "would drop every layer"),
    (dict(drop_layers=[0, 1, 2, 3]), "would drop every layer"),
    (dict(drop_layers=[7]), "outside 0..3"),
    (dict(num_hidden_layers=3, drop_layers=[0, 1]), "contradicts drop_layers"),
])
def test_bad_targets(target, match):
    with pytest.raises(PruningConfigError, match=match):
        resolve_target(tiny_model("mistral").config, PruneTarget.from_dict(target))


def test_llama_hidden_divisibility_suggests_sizes():
    cfg = tiny_model("llama").config  # 6 heads
    with pytest.raises(PruningConfigError, match=r"hidden_size % num_attention_heads == 0.*Nearest valid hidden_size: 36 or 42"):
        resolve_target(cfg, PruneTarget.from_dict(dict(hidden_size=40)))
    # Mistral/Qwen configs accept it (head_dim explicit)
    resolve_target(tiny_model("qwen2").config, PruneTarget.from_dict(dict(hidden_size=40)))


def test_unknown_target_field_suggests_nearest():
    with pytest.raises(PruningConfigError, match="did you mean 'hidden_size'"):
        PruneTarget.from_dict({"hiden_size": 3})


def test_unknown_model_type():
    from transformers import GPT2Config

    from minitron_hf.arch import FAMILIES

    assert {"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "gemma2", "gemma3_text"} <= set(FAMILIES)
    with pytest.raises(UnsupportedModelError, match="model_type='gpt2' is not supported; supported model types: "
                       + ", ".join(sorted(FAMILIES))):
        family_of(GPT2Config())


def test_streamed_files_are_valid_safetensors_in_source_dtype(tmp_path):
    """The hand-written safetensors (header first, bytes streamed) read back with the safetensors
    library and equal slicing the source tensors in memory, in bf16 as well."""
    from safetensors.torch import load_file

    from minitron_hf.pruning.trim import slice_tensor

    model = tiny_model("qwen2").to(torch.bfloat16)
    src = tmp_path / "src"
    model.save_pretrained(src)
    imp = random_importance(model.config, seed=2)
    new, drop = resolve_target(model.config, PruneTarget.from_dict(dict(hidden_size=40, drop_layers=[2])))
    plan = make_plan(model.config, imp, new, drop)
    out = tmp_path / "out"
    out.mkdir()
    shapes = trim_checkpoint(src, out, plan, progress=False, max_shard_bytes=30_000)
    written = {}
    for f in out.glob("*.safetensors"):
        written.update(load_file(str(f)))
    source = load_file(str(src / "model.safetensors"))
    expect = dict(slice_tensor(k, v, plan) for k, v in source.items() if not k.startswith("model.layers.2."))
    assert written.keys() == expect.keys() == shapes.keys()
    for k in expect:
        assert written[k].dtype == torch.bfloat16 and torch.equal(written[k], expect[k]), k


def test_composed_plan_equals_two_step_surgery(tmp_path):
    """Pruning twice equals pruning once with the composed plan (iterative pruning records it)."""
    model = tiny_model("mistral", num_hidden_layers=5)
    imp1 = random_importance(model.config, seed=1)
    new1, d1 = resolve_target(model.config, PruneTarget.from_dict(dict(hidden_size=40, intermediate_size=80,
                                                                         num_attention_heads=4, drop_layers=[1])))
    p1 = make_plan(model.config, imp1, new1, d1)
    mid_cfg = type(model.config).from_dict(p1.new_config)
    imp2 = random_importance(mid_cfg, seed=2)
    new2, d2 = resolve_target(mid_cfg, PruneTarget.from_dict(dict(hidden_size=30, intermediate_size=50,
                                                                    num_attention_heads=2, num_key_value_heads=1,
                                                                    drop_layers=[0])))
    p2 = make_plan(mid_cfg, imp2, new2, d2)
    model.save_pretrained(tmp_path / "src")
    for name, s, plan in (("mid", tmp_path / "src", p1), ("two", tmp_path / "mid", p2), ("once", tmp_path / "src", p1.then(p2))):
        (tmp_path / name).mkdir()
        trim_checkpoint(s, tmp_path / name, plan, progress=False)
        type(model.config).from_dict(plan.new_config).save_pretrained(tmp_path / name)
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "two").eval()
    once = AutoModelForCausalLM.from_pretrained(tmp_path / "once").eval()
    assert p1.then(p2).layers == [2, 3, 4]
    assert torch.equal(seeded_logits(two), seeded_logits(once))
