"""Conformance suite: every model family in :data:`minitron_hf.arch.FAMILIES` runs every check here.

The tests are parametrized over ``FAMILIES`` itself, so a family module added there runs the suite with no edit to
this file (if its tiny model needs special config values, add them to :data:`TINY`). Each family gets one tiny
random model (conftest's ``tiny_config``: hidden 48, MLP 96, 6 query heads in 2 KV groups, 4 layers, the real
tokenizer's vocabulary so FP8 calibration can tokenize text), with every bias field the family knows switched on and
all norms and biases random, so no tensor the pruner slices is trivially zero or one. It is pruned twice:

- keep everything (every size the source's) with measured importance scores, which only reorders channels;
- a real width + depth target (:data:`TARGET`), the output the later checks use.

Checks, one test each: (1) keep-everything pruning leaves the logits unchanged; (2) every trimmed tensor equals a
naive reference rebuilt from the plan's kept indices (``test_trim.naive_reference``, written head by head and
neuron by neuron, sharing nothing with trim.py's slicing rules); (3) the analytic parameter count equals the real
number of parameters, source and pruned, tied and untied, with and without biases; (4) KD of a model against itself
is 0 and the chunked KD loss equals the loss on the model's own logits, values and gradients; (5)
``Family.logits`` reproduces the model's logits from its last hidden state; (6) the pruned output loads in vanilla
``from_pretrained`` and generates; (7) ModelOpt FP8 export of the pruned output dequantizes to its weights; (8) the
importance probes fire with the right widths; (9) the family knows every config field transformers writes and
refuses an unknown one; (10) the LoRA targets and FP8 linear shapes match the real modules.

Mixtures of experts (``Family.is_moe``) also drop one of 4 experts per layer in the real target; their naive trim
reference is rebuilt expert by expert and compared on the on-disk (per-expert) names transformers writes; (3) also
checks the active count; (7) checks that FP8 export refuses them by name before any work (ModelOpt 0.42 cannot export
transformers 5's stacked experts).

Hybrid families (Nemotron-H: Mamba2, attention and MLP layers) hold different things in different layers
(``Family.layer_types``): the probes, linears and family-specific axes (``Family.extra_width_fields``, pruned too in
the real target: :data:`EXTRA_TARGET`) are checked per layer type; a score a layer has no probe for stays zero.

Serving with vLLM is out of scope here: tests/test_serve.py covers it once, on the default (Llama) model.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from minitron_hf.arch import FAMILIES, Family, UnsupportedModelError, family_of
from minitron_hf.distill.losses import LOSSES, chunked_kd_loss, naive_kd_loss, shift_labels
from minitron_hf.export.fp8 import dims_not_divisible, linear_shapes
from minitron_hf.pruning.importance import Importance, estimate_importance
from minitron_hf.pruning.trim import PrunePlan, copy_aux_files

from conftest import assert_dequantized_close, naive_reference, tiny_config, tiny_model
from minitron_hf.tiny import MOE_EXPERTS, target_for  # the width + depth target (shared with benchmarks)

# Tiny-config values a family needs beyond conftest.tiny_config's, by model_type. Mistral: conftest's head_dim 12
# makes the query/KV widths 72/24, not multiples of 16 as FP8 GEMMs want; 32 keeps heads * head_dim != hidden.
TINY: dict[str, dict] = {"mistral": dict(head_dim=32),
                         # transformers' default pattern has a 'moe' layer, which the family refuses
                         "nemotron_h": dict(layers_block_type=["linear_attention", "linear_attention", "mlp",
                                                               "full_attention"])}
VOCAB = 49152  # the default model's tokenizer (FP8 calibration tokenizes the embedded text with it)


def _target(family: Family) -> dict:
    return target_for(family.model_type)  # TARGET, with the family's MLP field, own axes and experts


def _bias_fields(family: Family) -> list[str]:
    return list(family.bias_fields)


def _ids(seed: int, batch: int = 2, seq: int = 12, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@dataclass
class Case:
    """One family's tiny source model and its two pruned outputs."""

    model_type: str
    family: Family
    model: torch.nn.Module  # the source
    importance: Importance
    keep_plan: PrunePlan
    keep: torch.nn.Module  # keep-everything output, loaded with from_pretrained
    plan: PrunePlan
    pruned: torch.nn.Module  # TARGET output, loaded with from_pretrained
    dir: Path  # holds src/, keep/, pruned/ (the last with the tokenizer files)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def case(request, tmp_path_factory, default_model_dir, prune_tiny) -> Case:
    model_type = request.param
    family = FAMILIES[model_type]
    model = tiny_model(model_type, vocab_size=VOCAB, **TINY.get(model_type, {}),
                       **{f: True for f in _bias_fields(family)})
    # a mixture of experts routes on the hidden state: biases as large as 0.5 (o_proj's is added to every token)
    # would send every token to the same two experts (measured on qwen3_moe); at the weights' scale they do not. A
    # ReLU-type MLP (Nemotron-H's relu2) with MLP biases of 0.5 has neurons that never fire, whose score is then 0
    bias_std = 0.02 if family.is_moe or "relu" in str(getattr(model.config, "mlp_hidden_act", "")) else 0.5
    with torch.no_grad():  # HF initialises biases to zero: a mis-sliced zero bias would go unnoticed
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.copy_(torch.randn_like(p) * bias_std)
    d = tmp_path_factory.mktemp(model_type)
    imp = estimate_importance(model, _ids(1, batch=6, seq=16), batch_size=3, progress=False)
    c = model.config
    everything = {"hidden_size": c.hidden_size, family.mlp_field: getattr(c, family.mlp_field),
                  "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads}
    if family.is_moe:
        everything[family.experts_field] = family.num_experts(c)
    everything.update({k: getattr(c, k) for k in family.extra_width_fields})
    keep_plan, keep = prune_tiny(model, d, everything, importance=imp, name="keep")
    plan, pruned = prune_tiny(model, d, _target(family), importance=imp, name="pruned")
    copy_aux_files(default_model_dir, d / "pruned")  # the tokenizer, for FP8 calibration
    return Case(model_type, family, model, imp, keep_plan, keep, plan, pruned, d)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# ---------------------------------------------------------------------------------------------------- 1. reorder

def test_keep_everything_only_reorders(case):
    plan, c = case.keep_plan, case.model.config
    # the scores are not flat, so every axis really was permuted (else this test would prove nothing)
    assert sorted(plan.hidden.tolist()) == list(range(c.hidden_size)) != plan.hidden.tolist()
    assert plan.layers == list(range(c.num_hidden_layers))
    mlp = getattr(c, case.family.mlp_field)
    # (a mixture of experts: every expert's neurons, and the experts themselves)
    assert any(n.tolist() != list(range(mlp)) for l in plan.layers for n in plan.neurons[l].view(-1, mlp))
    if case.family.is_moe:
        assert any(plan.experts[l].tolist() != list(range(case.family.num_experts(c))) for l in plan.layers)
    assert any(plan.heads[l].tolist() != list(range(c.num_attention_heads)) for l in plan.layers)
    for l, axes in plan.axes.items():  # a family's own axes (Nemotron-H's Mamba heads and channels) moved too
        assert all(sorted(v.tolist()) == list(range(len(v))) for v in axes.values())
    if plan.axes:
        assert any(v.tolist() != list(range(len(v))) for axes in plan.axes.values() for v in axes.values())
    ids = _ids(3)
    torch.testing.assert_close(_logits(case.keep, ids), _logits(case.model, ids), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- 2. trim

def test_trim_equals_naive_reference(case):
    plan, cfg, family = case.plan, case.pruned.config, case.family
    assert (cfg.hidden_size, getattr(cfg, family.mlp_field), cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.num_hidden_layers) == (32, 64, 4, 2, 3)
    assert family.num_experts(cfg) == (MOE_EXPERTS if family.is_moe else 0)
    assert plan.layers == [0, 2, 3]
    got = load_file(case.dir / "pruned" / "model.safetensors")
    # the output holds exactly the source's tensors of the kept layers, renumbered
    source = load_file(case.dir / "src" / "model.safetensors")
    expect_names = set()
    for name in source:
        parts = name.split(".")
        if parts[1:2] == ["layers"]:  # <prefix>.layers.N...: model.layers (backbone.layers for Nemotron-H)
            layer = int(parts[2])
            if layer not in plan.layers:
                continue
            parts[2] = str(plan.layers.index(layer))
            expert = family.expert_of(name.split(".", 3)[3])
            if expert:  # a per-expert tensor on disk: kept experts only, numbered by their new position
                if expert[0] not in plan.experts[layer].tolist():
                    continue
                parts[3:] = expert[1].replace("*", str(plan.experts[layer].tolist().index(expert[0]))).split(".")
        expect_names.add(".".join(parts))
    assert set(got) == expect_names
    ref = naive_reference(case.model, plan)
    unset = [n for n, p in ref.named_parameters() if p.isnan().any()]
    assert not unset, f"the naive reference does not rebuild {unset}: extend test_trim.naive_reference"
    # compared on the on-disk names, as transformers writes them (experts are stacked in memory; Nemotron-H's base
    # model is saved under backbone.)
    ref.save_pretrained(case.dir / "ref")
    ref_sd = load_file(case.dir / "ref" / "model.safetensors")
    for name, t in got.items():
        assert t.shape == ref_sd[name].shape and torch.equal(t, ref_sd[name]), name
    # biases were sliced too (the source has every bias field the family knows)
    for f in _bias_fields(case.family):
        assert getattr(cfg, f) is True


# ---------------------------------------------------------------------------------------------------- 3. count

def _real_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def test_parameter_count_equals_numel(case):
    family = case.family
    count = lambda m: family.count_parameters(m.config)["total"]  # noqa: E731
    for m in (case.model, case.keep, case.pruned):
        assert count(m) == _real_count(m)
    # variants: tied and untied embeddings, every on/off combination of the bias fields the family has
    bias = _bias_fields(family)
    seen = set()
    ties = (True, False) if family.can_tie_embeddings else (False,)  # Nemotron-H never ties (refused)
    for tie, *flags in itertools.product(ties, *[(False, True)] * len(bias)):
        cfg = tiny_config(case.model_type, tie_word_embeddings=tie, **TINY.get(case.model_type, {}),
                          **dict(zip(bias, flags)))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert tied == tie
        n = family.count_parameters(cfg)
        assert n["total"] == _real_count(model) == n["embedding"] + n["non_embedding"], (tie, flags)
        if family.is_moe:  # per token: everything but the experts a token is not routed to
            experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
            k, E = cfg.num_experts_per_tok, family.num_experts(cfg)
            assert n["active"] == n["total"] - experts * (E - k) // E < n["total"]
        else:
            assert "active" not in n
        assert n["embedding"] == cfg.vocab_size * cfg.hidden_size * (1 if tie else 2)
        seen.add(n["total"])
    assert len(seen) == len(ties) * 2 ** len(bias)  # each variant changes the count: none of them is ignored


# ---------------------------------------------------------------------------------------------------- 4. KD

def _head(model):
    head = model.get_output_embeddings()
    return head.weight, head.bias


def _kd_batch():
    ids = _ids(5, batch=2, seq=12)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding: those positions must count nowhere
    return ids, mask, shift_labels(ids, mask)


def test_kd_against_itself_is_zero(case):
    ids, mask, labels = _kd_batch()
    with torch.no_grad():
        h = case.model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    w, b = _head(case.model)
    cap = case.family.logit_softcap(case.model.config)
    for kind in LOSSES:
        loss = chunked_kd_loss(h, w, h, w, labels, student_bias=b, teacher_bias=b, kind=kind, chunk_size=5,
                               student_softcap=cap, teacher_softcap=cap)
        assert abs(loss.item()) < 1e-6, kind


@pytest.mark.parametrize("temperature, ce_weight", [(1.0, 0.0), (2.0, 0.5)])
def test_chunked_kd_equals_loss_on_model_logits(case, temperature, ce_weight):
    """Student = the pruned model, teacher = the source: the chunked loss from final hidden states and LM heads
    equals the naive loss on the models' own ``logits`` output, in value and in every student gradient."""
    student, teacher = case.pruned, case.model
    caps = {f"{who}_softcap": family_of(m.config).logit_softcap(m.config)
            for who, m in (("student", student), ("teacher", teacher))}
    ids, mask, labels = _kd_batch()
    params = [p for p in student.parameters()]
    with torch.no_grad():
        t_out = teacher(ids, attention_mask=mask, output_hidden_states=True)
    s_out = student(ids, attention_mask=mask, output_hidden_states=True)
    ws, bs = _head(student)
    wt, bt = _head(teacher)
    for kind in LOSSES:
        kw = dict(kind=kind, temperature=temperature, ce_weight=ce_weight, beta=0.3)
        ref = naive_kd_loss(s_out.logits, t_out.logits, labels, **kw)
        ref_grads = torch.autograd.grad(ref, params, retain_graph=True, allow_unused=True)
        out = chunked_kd_loss(s_out.hidden_states[-1], ws, t_out.hidden_states[-1], wt, labels, student_bias=bs,
                              teacher_bias=bt, chunk_size=5, **caps, **kw)
        grads = torch.autograd.grad(out, params, retain_graph=True, allow_unused=True)
        assert ref.item() > 1e-5  # a pruned random model really differs from its source (near-uniform logits)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)
        for (name, _), a, g in zip(student.named_parameters(), grads, ref_grads):
            assert (a is None) == (g is None), name
            if g is not None:
                torch.testing.assert_close(a, g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{kind} {name}: {m}")


# ---------------------------------------------------------------------------------------------------- 5. logits

@pytest.mark.parametrize("which", ["model", "pruned"])
def test_family_logits_reproduce_model_logits(case, which):
    model = getattr(case, which)
    ids = _ids(6)
    last_layer = {}
    hook = model.base_model.layers[-1].register_forward_hook(lambda m, a, out: last_layer.update(out=out))
    try:
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
            base = model.base_model(ids)
    finally:
        hook.remove()
    h = out.hidden_states[-1]
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    # transformers 5: the last hidden state is after the final norm (the base model's output), not the last layer's
    assert torch.equal(h, base.last_hidden_state)
    raw = last_layer["out"][0] if isinstance(last_layer["out"], tuple) else last_layer["out"]
    assert not torch.allclose(h, raw)
    w, b = _head(model)
    z = case.family.logits(h, w, b, model.config)
    torch.testing.assert_close(z, out.logits, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- 6. load + generate

def test_pruned_output_loads_and_generates(case):
    model = AutoModelForCausalLM.from_pretrained(case.dir / "pruned").eval()  # vanilla transformers, nothing else
    assert type(model) is type(case.model)
    wrote = load_file(case.dir / "pruned" / "model.safetensors")
    # saved again, the loaded model writes back exactly what we wrote (on-disk names: experts are stacked in memory,
    # Nemotron-H's base model is "model" in memory and "backbone" on disk)
    model.save_pretrained(case.dir / "again")
    again = load_file(case.dir / "again" / "model.safetensors")
    assert set(again) == set(wrote)
    for name, t in wrote.items():
        assert torch.equal(again[name], t), name  # no weight re-initialised as "missing"
    prompt = _ids(7, batch=2, seq=6)
    n_new = 5
    model.generation_config.eos_token_id = None  # a random model may pick the EOS id: always n_new tokens
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new, do_sample=False,
                         pad_token_id=0)
    # greedy reference: re-run the whole sequence each step, take the argmax (no KV cache)
    seq = prompt
    with torch.no_grad():
        for _ in range(n_new):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


# ---------------------------------------------------------------------------------------------------- 7. FP8

def test_fp8_export_of_pruned_output(case, tmp_path):
    pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed")
    from minitron_hf.data import DataConfig
    from minitron_hf.export.fp8 import FP8Config, export_fp8

    assert dims_not_divisible(case.pruned.config) == []
    rec = export_fp8(case.dir / "pruned", DataConfig(), FP8Config(output=str(tmp_path / "fp8"), calib_samples=2,
                                                                  seq_len=16, batch_size=2, dtype="float32"))
    types = case.family.layer_types(case.pruned.config)
    # layer_linears counts one expert's projections; a mixture of experts quantizes those of each of its experts
    experts = case.family.num_experts(case.pruned.config) if case.family.is_moe else 1
    assert rec["quantized_linears"] == sum(len(case.family.layer_linears(t)) + (experts - 1) * len(
        case.family.expert_linears) for t in types)
    assert rec["not_divisible_by_16"] == []
    assert_dequantized_close(load_file(case.dir / "pruned" / "model.safetensors"), tmp_path / "fp8")


# ---------------------------------------------------------------------------------------------------- 8. importance

def test_importance_probes_fire(case):
    family, model, imp = case.family, case.model, case.importance
    c = model.config
    imp.check_matches(c)
    L, P = c.num_hidden_layers, len(family.hidden_probes)
    types = family.layer_types(c)
    assert len(types) == L
    assert imp.hidden_per_layer.shape == (L, P, c.hidden_size) and len(set(family.hidden_probes)) == P > 0
    # the hidden probes are norms over the hidden axis (Qwen3's q/k norms are per head): Llama-style layers probe
    # both of theirs; Gemma probes the two of its four that feed attention and the MLP; Nemotron-H blocks have one.
    # Every hidden-axis norm is sliced with the hidden channels.
    for layer in model.base_model.layers:
        hidden_norms = {n for n, m in layer.named_modules() if "norm" in type(m).__name__.lower()
                        and getattr(m, "weight", None) is not None and m.weight.shape == (c.hidden_size,)}
        assert set(family.hidden_probes) <= hidden_norms and len(family.hidden_probes) >= min(2, len(hidden_norms))
        assert all(family.layer_rules.get(f"{n}.weight") == ("hidden", None) for n in hidden_norms)
    extra = family.extra_scores(c)
    for l, t in enumerate(types):
        fed = {p.score for p in family.layer_probes(c, t)} - {"hidden"}
        # every probe of every layer fired; a score the layer has no probe for (a hybrid's attention scores in a
        # Mamba layer) stays zero
        for name in ["heads", *(["neurons"] if not family.is_moe else []), *extra]:
            row = imp.score(name)[l]
            assert torch.isfinite(row).all()
            if name in fed:
                assert (row > 0).all() and row.std() > 0, (l, name)
            else:
                assert (row == 0).all(), (l, name)
        assert torch.isfinite(imp.hidden_per_layer[l]).all() and (imp.hidden_per_layer[l] > 0).all()
        for p in range(P):
            assert imp.hidden_per_layer[l, p].std() > 0
        for p, q in itertools.combinations(range(P), 2):  # distinct probe points, not one module twice
            assert not torch.equal(imp.hidden_per_layer[l, p], imp.hidden_per_layer[l, q])
    if family.is_moe:  # the experts probe fired in every layer; an expert the router sent no token scores 0, and
        # so do its neurons (none are observed), but here every expert of every layer gets tokens
        routed = imp.experts > 0
        assert torch.isfinite(imp.experts).all() and torch.isfinite(imp.neurons).all()
        assert routed.all()
        assert ((imp.neurons > 0).all(-1) == routed).all() and ((imp.neurons == 0).all(-1) == ~routed).all()
        for l in range(L):
            assert imp.neurons[l].std() > 0
    # the probe points carry the widths the scores assume: [heads * head_dim] into the head probe, [intermediate]
    # into the neuron probe, [hidden] out of every hidden probe, and each family score's width after its transform
    want = {"heads": c.num_attention_heads * family.head_dim(c), "neurons": c.intermediate_size,
            "hidden": c.hidden_size, **{k: shape[-1] for k, shape in extra.items()}}
    widths, expect, handles = [], [], []
    for layer, t in zip(model.base_model.layers, types):
        for probe in family.layer_probes(c, t):
            if probe.routed:  # the experts module: checked below
                assert family.is_moe and probe.score == "experts" and probe.path == family.neuron_probe
                continue

            def record(x, probe=probe):
                widths.append((probe.score, (probe.transform(x) if probe.score in extra else x).shape[-1]))
            module = layer.get_submodule(probe.path)
            handles.append(module.register_forward_hook(lambda m, a, o, r=record: r(o)) if probe.output else
                           module.register_forward_pre_hook(lambda m, a, r=record: r(a[0])))
            expect.append((probe.score, want[probe.score]))
        head, neuron, hidden = family.probes(layer)  # the named probe points the layer has
        assert [m for m in hidden] == [layer.get_submodule(p) for p in family.hidden_probes]
    try:
        with torch.no_grad():
            model(_ids(8))
    finally:
        for h in handles:
            h.remove()
    assert sorted(widths) == sorted(expect) and {s for s, _ in expect} >= {"heads", "hidden"}
    if family.is_moe:  # the neuron probe is the experts module: [experts, hidden, mlp] down weights
        E, mlp = family.num_experts(c), getattr(c, family.mlp_field)
        for layer in model.base_model.layers:
            assert family.probes(layer)[1].down_proj.shape == (E, c.hidden_size, mlp)
        assert imp.experts.shape == (L, E) and (imp.experts > 0).all() and imp.neurons.shape == (L, E, mlp)
    else:
        assert "neurons" in {s for s, _ in expect}


# ---------------------------------------------------------------------------------------------------- 9. config fields

def test_config_fields_cover_transformers_and_refuse_unknown(case):
    family, model_type = case.family, case.model_type
    # every field transformers' own config class writes (defaults, the tiny model's, the pruned output's) is known:
    # a field a newer transformers adds fails here, and someone decides whether the family module handles it
    for cfg in (AutoConfig.for_model(model_type, **TINY.get(model_type, {})), case.model.config, case.pruned.config, case.plan.new_config):
        assert family_of(cfg) is family
    d = case.model.config.to_dict()
    # a field of another family that this one does not handle (a lookalike): refused, named
    foreign = next(f for f in ("final_logit_softcapping", "num_local_experts", "logit_scale")
                   if not any(fnmatch.fnmatchcase(f, p) for p in family.config_fields))
    with pytest.raises(UnsupportedModelError, match=foreign):
        family_of({**d, foreign: 30})
    with pytest.raises(UnsupportedModelError, match=foreign):
        family_of(AutoConfig.for_model(model_type, **{foreign: 30}))


# ---------------------------------------------------------------------------------------------------- 10. LoRA, FP8 names

def test_lora_targets_and_linear_shapes_exist(case):
    from peft import LoraConfig, get_peft_model

    family = case.family
    for model in (case.model, case.pruned):
        c = model.config
        shapes = linear_shapes(c)
        assert set(shapes) == set(family.linears) | set(family.expert_linears)
        model = copy.deepcopy(model)
        family.prepare_quantization(model)  # what FP8 export quantizes: a mixture of experts' per-expert linears
        for layer, t in zip(model.base_model.layers, family.layer_types(c)):
            modules = {n.rsplit(".", 1)[-1]: m for n, m in layer.named_modules() if n}
            here = family.layer_linears(t)  # a hybrid's layers hold different linears
            assert set(here) <= set(shapes) and here
            assert {n for n, m in modules.items() if isinstance(m, torch.nn.Linear)} >= set(here)
            for name in here:
                n_in, n_out = shapes[name]
                assert tuple(modules[name].weight.shape) == (n_out, n_in), name
    # PEFT matches the names as module-name suffixes: every target wraps one linear per layer that holds it
    model = tiny_model(case.model_type, **TINY.get(case.model_type, {}))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=family.lora_targets))
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and n.rsplit(".", 1)[-1] in
               family.lora_targets]
    assert len(wrapped) == sum(len(set(family.layer_linears(t)) & set(family.lora_targets))
                               for t in family.layer_types(model.config))


# ---------------------------------------------------------------------------------------------------- 11. distill

@pytest.mark.slow
def test_minitron_distill_runs(case, tmp_path, default_model_dir):
    """`minitron distill` of the pruned output from its source runs end to end (the chunked loss, or the family's
    own full logits where they are soft-capped): it trains (the weights move, the losses are finite) and writes a
    student vanilla `from_pretrained` loads. That the loss and its gradients are right is checked above; on these
    near-uniform random models a few steps do not reliably lower it (Phi-3: 0.0090 -> 0.0101 at lr 3e-3)."""
    import json
    import math

    from transformers import AutoModelForCausalLM

    from minitron_hf.cli import main

    teacher = case.dir / "src"
    copy_aux_files(default_model_dir, teacher)
    out = tmp_path / "distill"
    assert main(["distill", "--student", str(case.dir / "pruned"), "--teacher", str(teacher), "--max-steps", "2",
                 "--per-device-train-batch-size", "2", "--seq-len", "32", "--eval-samples", "2", "--report-to", "none",
                 "--learning-rate", "3e-3", "--save-strategy", "no", "--output-dir", str(out)]) == 0
    s = json.loads((out / "distill.json").read_text())
    assert math.isfinite(s["after"]["eval_kd_loss"]) and math.isfinite(s["after"]["eval_student_lm_loss"])
    student = AutoModelForCausalLM.from_pretrained(out / "final")
    shape = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
             "vocab_size")
    assert {k: getattr(student.config, k) for k in shape} == {k: getattr(case.pruned.config, k) for k in shape}
    assert student.config.model_type == case.pruned.config.model_type
    before = dict(case.pruned.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in student.named_parameters())
