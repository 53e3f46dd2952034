"""Fixtures and helpers shared by the test files: tiny random models of every family, the embedded default model,
and the helpers and naive references that more than one test file uses (one copy each, here). Test files import the
plain functions (``from conftest import naive_reference``); fixtures they name as arguments."""

import json
import os
import signal
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

# the model types the tiny-model tests run on: every family of minitron_hf.arch
from minitron_hf.arch import FAMILIES, family_of  # noqa: E402
# tiny random models of every family (shared with benchmarks/serve_families.py)
from minitron_hf.tiny import tiny_config, tiny_model  # noqa: E402,F401
from minitron_hf.data import BlockDataset  # noqa: E402
from minitron_hf.export.fp8 import FP8_E4M3_MAX, dequantize  # noqa: E402
from minitron_hf.pruning.importance import estimate_importance, parse_aggregation  # noqa: E402
from minitron_hf.pruning.trim import PruneTarget, make_plan, resolve_target, trim_checkpoint  # noqa: E402

CONFIGS = list(FAMILIES)


def sigint_default():
    """``preexec_fn`` of a child a test interrupts with SIGINT: a suite started in the background by a shell without
    job control (``nohup make test &``) inherits SIGINT ignored, and so would its children; Python then installs no
    KeyboardInterrupt handler and the child never sees the signal. Reset it, as a terminal's foreground job has it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(params=list(CONFIGS))
def model_type(request):
    return request.param


@pytest.fixture(scope="session")
def default_model_dir():
    """The embedded default model converted to an HF checkpoint (cached across runs)."""
    from minitron_hf.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def save_with_tokenizer(model, d, default_model_dir):
    """Save ``model`` to ``d`` with the default model's tokenizer files (and chat template)."""
    model.save_pretrained(d)
    for f in default_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(f, d / f.name)
    return d


@pytest.fixture
def tiny_checkpoint(tmp_path, model_type, default_model_dir):
    """A saved tiny model of each architecture, carrying the default model's tokenizer files."""
    model = tiny_model(model_type, vocab_size=49152)  # the real tokenizer's vocabulary
    return save_with_tokenizer(model, tmp_path / f"tiny-{model_type}", default_model_dir), model


# --------------------------------------------------------------------------- pruning: surgery and its naive references

def _prune_tiny(model, tmp_path, target, importance=None, merge=False, name="out", max_shard_bytes=2 << 30):
    src = tmp_path / "src"
    if not src.exists():
        model.save_pretrained(src)
    imp = importance if importance is not None else estimate_importance(
        model, torch.randint(0, model.config.vocab_size, (6, 24), generator=torch.Generator().manual_seed(1)),
        batch_size=3, progress=False)
    new, drop = resolve_target(model.config, PruneTarget.from_dict(target))
    plan = make_plan(model.config, imp, new, drop, merge_pruned_heads=merge)
    out = tmp_path / name
    out.mkdir()
    trim_checkpoint(src, out, plan, progress=False, max_shard_bytes=max_shard_bytes)
    cfg = type(model.config).from_dict(plan.new_config)
    cfg.save_pretrained(out)
    return plan, AutoModelForCausalLM.from_pretrained(out).eval()


@pytest.fixture(scope="session")
def prune_tiny():
    """``prune_tiny(model, tmp_path, target, importance=None, merge=False, name="out", max_shard_bytes=2 GiB)`` ->
    (plan, pruned model): the model saved to tmp_path/src (once), scored on seeded random tokens unless ``importance``
    is given, trimmed to ``target`` into tmp_path/name with trim's own functions and loaded back."""
    return _prune_tiny


def mlp_target(model_type: str, target: dict) -> dict:
    """``target`` with ``intermediate_size`` read as the family's MLP width field (Qwen3-MoE: moe_intermediate_size)."""
    f = family_of({"model_type": model_type}, check=False).mlp_field
    return {f if k == "intermediate_size" else k: v for k, v in target.items()}


def seeded_logits(model, seed=3):
    """``model``'s logits on a fixed random batch (2 x 20 tokens from ``seed``): equal logits, equal models."""
    ids = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def naive_reference(model, plan):
    """Rebuild the pruned model with explicit per-head / per-neuron copies (no shared code with trim)."""
    if hasattr(model.model, "embeddings"):  # a hybrid Nemotron-H: per layer type, Mamba heads included
        return naive_hybrid_reference(model, plan)
    cfg = type(model.config).from_dict(plan.new_config)
    ref = AutoModelForCausalLM.from_config(cfg).eval()
    hd, hid = plan.head_dim, plan.hidden.tolist()
    src, dst = model.model, ref.model
    with torch.no_grad():
        for p in ref.parameters():  # a tensor this reference forgets stays NaN, never a plausible random init
            p.fill_(float("nan"))
        dst.embed_tokens.weight.copy_(torch.stack([src.embed_tokens.weight[:, c] for c in hid], 1))
        dst.norm.weight.copy_(torch.stack([src.norm.weight[c] for c in hid]))
        if hasattr(src.embed_tokens, "embed_scale"):  # Gemma: embeddings x sqrt(hidden) inside the model
            c = (model.config.hidden_size / len(hid)) ** 0.5  # keeps the embeddings' scale; the tied head's
            dst.embed_tokens.weight.mul_(c)                # logits are kept by dividing the final norm's (1 + w)
            dst.norm.weight.copy_((1 + dst.norm.weight) / c - 1)
        if not model.config.tie_word_embeddings:
            ref.lm_head.weight.copy_(torch.stack([model.lm_head.weight[:, c] for c in hid], 1))
        for new_i, old_i in enumerate(plan.layers):
            a, b = src.layers[old_i], dst.layers[new_i]
            for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                      "post_feedforward_layernorm") if hasattr(a, "pre_feedforward_layernorm") else \
                    ("input_layernorm", "post_attention_layernorm"):
                getattr(b, n).weight.copy_(torch.stack([getattr(a, n).weight[c] for c in hid]))
            qh, kvh = plan.heads[old_i].tolist(), plan.kv_heads[old_i].tolist()
            if hasattr(a.self_attn, "qkv_proj"):  # Phi-3: the rows of q, k and v in one tensor, in that order
                H, G = model.config.num_attention_heads, model.config.num_key_value_heads
                w = a.self_attn.qkv_proj.weight
                rows = torch.cat([w[off + h * hd:off + (h + 1) * hd] for off, heads in
                                  ((0, qh), (H * hd, kvh), ((H + G) * hd, kvh)) for h in heads])
                b.self_attn.qkv_proj.weight.copy_(torch.stack([rows[:, c] for c in hid], 1))
            for proj, heads in (("q_proj", qh), ("k_proj", kvh), ("v_proj", kvh)) if hasattr(a.self_attn, "q_proj") else ():
                w = getattr(a.self_attn, proj).weight
                rows = torch.cat([w[h * hd:(h + 1) * hd] for h in heads])
                getattr(b.self_attn, proj).weight.copy_(torch.stack([rows[:, c] for c in hid], 1))
                if getattr(a.self_attn, proj).bias is not None:
                    bias = getattr(a.self_attn, proj).bias
                    getattr(b.self_attn, proj).bias.copy_(torch.cat([bias[h * hd:(h + 1) * hd] for h in heads]))
            wo = a.self_attn.o_proj.weight
            cols = torch.cat([wo[:, h * hd:(h + 1) * hd] for h in qh], 1)
            b.self_attn.o_proj.weight.copy_(torch.stack([cols[c] for c in hid]))
            if a.self_attn.o_proj.bias is not None:  # Llama/Qwen3 attention_bias: o_proj's bias is hidden-sized
                b.self_attn.o_proj.bias.copy_(torch.stack([a.self_attn.o_proj.bias[c] for c in hid]))
            if hasattr(a.self_attn, "q_norm"):
                b.self_attn.q_norm.weight.copy_(a.self_attn.q_norm.weight)
                b.self_attn.k_norm.weight.copy_(a.self_attn.k_norm.weight)
            if hasattr(a.mlp, "experts"):  # a mixture of experts: the stacked experts, expert by expert
                naive_experts(a.mlp, b.mlp, plan.experts[old_i].tolist(), plan.neurons[old_i].tolist(), hid)
                continue
            keep = plan.neurons[old_i].tolist()
            if hasattr(a.mlp, "gate_up_proj"):  # Phi-3: gate rows, then up rows
                w, inter = a.mlp.gate_up_proj.weight, model.config.intermediate_size
                b.mlp.gate_up_proj.weight.copy_(torch.stack([torch.stack([w[j, c] for c in hid])
                                                             for j in keep + [inter + j for j in keep]]))
            for proj in ("gate_proj", "up_proj") if hasattr(a.mlp, "gate_proj") else ():
                w = getattr(a.mlp, proj).weight
                getattr(b.mlp, proj).weight.copy_(torch.stack([torch.stack([w[j, c] for c in hid]) for j in keep]))
            wd = a.mlp.down_proj.weight
            b.mlp.down_proj.weight.copy_(torch.stack([torch.stack([wd[c, j] for j in keep]) for c in hid]))
            if a.mlp.down_proj.bias is not None:  # Llama mlp_bias
                for proj in ("gate_proj", "up_proj"):
                    getattr(b.mlp, proj).bias.copy_(torch.stack([getattr(a.mlp, proj).bias[j] for j in keep]))
                b.mlp.down_proj.bias.copy_(torch.stack([a.mlp.down_proj.bias[c] for c in hid]))
    return ref


def naive_experts(a, b, experts, neurons, hid):
    """A sparse MoE block: router rows of the kept experts (new order) by hidden columns; kept expert ``i`` (source
    ``experts[i]``) gets its own kept neurons ``neurons[i]``: gate and up rows (stacked [gate; up]), down columns."""
    b.gate.weight.copy_(torch.stack([torch.stack([a.gate.weight[e, c] for c in hid]) for e in experts]))
    inter = a.experts.down_proj.shape[2]
    for i, (e, keep) in enumerate(zip(experts, neurons)):
        gu, down = a.experts.gate_up_proj[e], a.experts.down_proj[e]
        b.experts.gate_up_proj[i].copy_(torch.stack([torch.stack([gu[j, c] for c in hid])
                                                     for j in keep + [inter + j for j in keep]]))
        b.experts.down_proj[i].copy_(torch.stack([torch.stack([down[c, j] for j in keep]) for c in hid]))


def naive_hybrid_reference(model, plan):
    """The pruned Nemotron-H rebuilt with explicit per-head / per-channel / per-neuron copies (shares nothing with
    trim.py or the family's slicing rules): Mamba heads (in their groups) and head-dim channels through in_proj's z,
    x and dt rows, conv1d's x channels, A_log, D, dt_bias, the gated norm and out_proj's columns; B and C rows
    whole."""
    c = model.config
    cfg = type(c).from_dict(plan.new_config)
    ref = AutoModelForCausalLM.from_config(cfg).eval()
    hid, hd = plan.hidden.tolist(), plan.head_dim
    nh, mhd, G, N = c.mamba_num_heads, c.mamba_head_dim, c.n_groups, c.ssm_state_size
    I = nh * mhd
    src, dst = model.model, ref.model

    def cols(w, idx):
        return torch.stack([w[:, j] for j in idx], 1)

    def rows(w, idx):
        return torch.stack([w[j] for j in idx])

    with torch.no_grad():
        for p in ref.parameters():
            p.fill_(float("nan"))
        dst.embeddings.weight.copy_(cols(src.embeddings.weight, hid))
        dst.norm_f.weight.copy_(rows(src.norm_f.weight, hid))
        if not c.tie_word_embeddings:
            ref.lm_head.weight.copy_(cols(model.lm_head.weight, hid))
        for new_i, old_i in enumerate(plan.layers):
            a, b = src.layers[old_i], dst.layers[new_i]
            assert a.block_type == b.block_type
            b.norm.weight.copy_(rows(a.norm.weight, hid))
            x, y = a.mixer, b.mixer
            if a.block_type == "linear_attention":
                heads = plan.axes[old_i]["mamba_heads"].tolist()
                dims = [ch - heads[0] * mhd for ch in plan.axes[old_i]["mamba"].tolist()[:cfg.mamba_head_dim]]
                # heads stay in their groups, the same count per group
                assert [h // (nh // G) for h in heads] == sorted(h // (nh // G) for h in heads)
                chans = [h * mhd + p for h in heads for p in dims]
                in_rows = chans + [I + ch for ch in chans] + [2 * I + r for r in range(2 * G * N)] + \
                    [2 * I + 2 * G * N + h for h in heads]
                y.in_proj.weight.copy_(cols(rows(x.in_proj.weight, in_rows), hid))
                if x.in_proj.bias is not None:  # use_bias
                    y.in_proj.bias.copy_(rows(x.in_proj.bias, in_rows))
                    y.out_proj.bias.copy_(rows(x.out_proj.bias, hid))
                conv_rows = chans + [I + r for r in range(2 * G * N)]
                y.conv1d.weight.copy_(rows(x.conv1d.weight, conv_rows))
                if x.conv1d.bias is not None:  # use_conv_bias
                    y.conv1d.bias.copy_(rows(x.conv1d.bias, conv_rows))
                for name in ("A_log", "D", "dt_bias"):
                    getattr(y, name).copy_(rows(getattr(x, name), heads))
                y.norm.weight.copy_(rows(x.norm.weight, chans))
                y.out_proj.weight.copy_(rows(cols(x.out_proj.weight, chans), hid))
            elif a.block_type == "full_attention":
                qh, kvh = plan.heads[old_i].tolist(), plan.kv_heads[old_i].tolist()
                for proj, hs in (("q_proj", qh), ("k_proj", kvh), ("v_proj", kvh)):
                    w = getattr(x, proj).weight
                    getattr(y, proj).weight.copy_(cols(torch.cat([w[h * hd:(h + 1) * hd] for h in hs]), hid))
                wo = torch.cat([x.o_proj.weight[:, h * hd:(h + 1) * hd] for h in qh], 1)
                y.o_proj.weight.copy_(rows(wo, hid))
            else:
                keep = plan.neurons[old_i].tolist()
                y.up_proj.weight.copy_(cols(rows(x.up_proj.weight, keep), hid))
                y.down_proj.weight.copy_(rows(cols(x.down_proj.weight, keep), hid))
                if x.up_proj.bias is not None:  # mlp_bias
                    y.up_proj.bias.copy_(rows(x.up_proj.bias, keep))
                    y.down_proj.bias.copy_(rows(x.down_proj.bias, hid))
    return ref


# ---------------------------------------------------------------------------------------- importance: naive references

def naive_reduce(x, mask, batch_agg, seq_agg):
    """x: [B, S, C] magnitudes. Loop over samples, keep only real tokens, reduce."""
    per_sample = []
    for b in range(x.shape[0]):
        tok = x[b][mask[b].bool()]
        if len(tok) == 0:
            continue
        per_sample.append({"mean": tok.mean(0), "l1": tok.sum(0), "l2": tok.pow(2).sum(0).sqrt(),
                           "max": tok.max(0).values}[seq_agg])
    s = torch.stack(per_sample)
    return {"mean": s.mean(0), "l1": s.sum(0), "l2": s.pow(2).sum(0).sqrt(), "max": s.max(0).values}[batch_agg]


def naive_moe_scores(model, ids, mask, batch_agg, seq_agg):
    """Naive reference of the MoE scores, token by token and expert by expert. The routing is the model's own (the
    router's top-k output, captured); each routed (token, expert) pair's FFN is recomputed here with per-token
    matrix-vector products from the stacked weights. Returns ([layer, expert] scores, [layer, expert, neuron])."""
    B, S = ids.shape
    inputs, routes = [], []
    hs = []
    for layer in model.model.layers:
        hs.append(layer.mlp.register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(B, S, -1))))
        hs.append(layer.mlp.gate.register_forward_hook(lambda m, a, o: routes.append((o[1].view(B, S, -1),
                                                                                      o[2].view(B, S, -1)))))
    with torch.no_grad():
        model(ids, attention_mask=mask)
    for h in hs:
        h.remove()
    act_fn = torch.nn.functional.silu
    experts_out, neurons_out = [], []
    torch.set_grad_enabled(False)
    for layer, x, (weights, index) in zip(model.model.layers, inputs, routes):
        E, _, inter = layer.mlp.experts.down_proj.shape
        gu, down = layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj
        score = torch.zeros(E, dtype=torch.float64)
        acts = torch.zeros(E, B, S, inter)
        routed = torch.zeros(E, B, S)
        for b in range(B):
            for s in range(S):
                if not mask[b, s]:
                    continue
                for slot in range(index.shape[-1]):
                    e = int(index[b, s, slot])
                    h = x[b, s]
                    act = act_fn(gu[e, :inter] @ h) * (gu[e, inter:] @ h)
                    out = down[e] @ act
                    score[e] += float(weights[b, s, slot]) * float(out.norm())
                    acts[e, b, s], routed[e, b, s] = act.abs(), 1
        experts_out.append(score.float())
        neurons_out.append(torch.stack([naive_reduce(acts[e], routed[e], batch_agg, seq_agg) for e in range(E)]))
    torch.set_grad_enabled(True)
    return torch.stack(experts_out), torch.stack(neurons_out)


def check_hybrid_importance(model, ids, mask, aggregation):
    """The scores of a hybrid model against a naive capture of every activation they are defined on: per layer type,
    the x rows of in_proj's output (Mamba), o_proj's input per head (attention), down_proj's input (MLP), and every
    block norm's output; a score a layer has no probe for is zero. (test_importance and test_nemotron_h run it.)"""
    imp = estimate_importance(model, [{"input_ids": ids, "attention_mask": mask}], aggregation, progress=False)
    acts = {"x": {}, "heads": {}, "neurons": {}, "hidden": []}
    c = model.config
    I, H, hd = c.mamba_num_heads * c.mamba_head_dim, c.num_attention_heads, c.head_dim
    hs = []
    for i, layer in enumerate(model.model.layers):
        hs.append(layer.norm.register_forward_hook(lambda m, a, o: acts["hidden"].append(o.abs())))
        if layer.block_type == "linear_attention":
            hs.append(layer.mixer.in_proj.register_forward_hook(
                lambda m, a, o, i=i: acts["x"].update({i: o[..., I:2 * I].abs()})))  # rows z, x, B, C, dt
        elif layer.block_type == "full_attention":
            hs.append(layer.mixer.o_proj.register_forward_pre_hook(
                lambda m, a, i=i: acts["heads"].update({i: a[0].view(*a[0].shape[:-1], H, hd).norm(dim=-1)})))
        else:
            hs.append(layer.mixer.down_proj.register_forward_pre_hook(
                lambda m, a, i=i: acts["neurons"].update({i: a[0].abs()})))
    with torch.no_grad():
        model(ids, attention_mask=mask)
    for h in hs:
        h.remove()
    b, s = parse_aggregation(aggregation)
    types = c.layers_block_type
    assert set(acts["x"]) == {i for i, t in enumerate(types) if t == "linear_attention"}
    assert set(acts["heads"]) == {i for i, t in enumerate(types) if t == "full_attention"}
    assert set(acts["neurons"]) == {i for i, t in enumerate(types) if t == "mlp"}
    for l in range(len(types)):
        for name, key in (("mamba", "x"), ("heads", "heads"), ("neurons", "neurons")):
            got = imp.score(name)[l]
            if l in acts[key]:
                assert got.shape[-1] == acts[key][l].shape[-1] and (got > 0).any()
                torch.testing.assert_close(got, naive_reduce(acts[key][l], mask, b, s), rtol=1e-5, atol=1e-6)
            else:
                assert (got == 0).all()
    hidden = sum(naive_reduce(h, mask, b, s) for h in acts["hidden"])
    torch.testing.assert_close(imp.hidden, hidden, rtol=1e-5, atol=1e-5)
    assert imp.meta["samples"] == len(ids)
    return imp


# -------------------------------------------------------------------------------------------------------- distillation

def bigram_data(n=32, seq=16, vocab=128, seed=0):
    """``n`` blocks of ``seq`` tokens a tiny model can learn (distillation and training tests)."""
    # a learnable sequence distribution: tokens follow a fixed random bigram table
    nxt = torch.randint(0, vocab, (vocab,), generator=torch.Generator().manual_seed(1234))  # one fixed table
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, seq, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for i in range(1, seq):
        x[:, i] = torch.where(torch.rand(n, generator=g) < 0.8, nxt[x[:, i - 1]], torch.randint(0, vocab, (n,), generator=g))
    return BlockDataset(x)


def distill_args(tmp_path, **kw):
    """The DistillationConfig of the tiny training tests (12 CPU steps, no reports), ``kw`` on top."""
    # here, not at the top: the Trainer stack takes seconds to import and most test files never train
    from minitron_hf.distill.trainer import DistillationConfig

    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=3e-3, max_steps=12,
                logging_steps=1, report_to="none", save_strategy="no", seed=0, use_cpu=True,
                lr_scheduler_type="cosine", warmup_steps=2, disable_tqdm=True)
    base.update(kw)
    return DistillationConfig(**base)


@pytest.fixture
def tiny_pair_dirs(tmp_path, default_model_dir):
    """(student, teacher) folders: tiny Llamas with the default model's tokenizer, the student narrower."""
    for name, seed, kw in (("teacher", 0, {}), ("student", 1, dict(hidden_size=36, intermediate_size=48))):
        m = tiny_model("llama", vocab_size=49152, seed=seed, **kw)
        m.save_pretrained(tmp_path / name)
        for f in default_model_dir.glob("tokenizer*"):
            shutil.copy2(f, tmp_path / name / f.name)
    return tmp_path / "student", tmp_path / "teacher"


# --------------------------------------------------------------------------------------- the pipeline (`minitron run`)

PIPELINE_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@pytest.fixture
def teacher_dir(tmp_path, default_model_dir):
    """A tiny random Llama with the default model's tokenizer (vocab 49152)."""
    d = tmp_path / "teacher"
    tiny_model("llama", vocab_size=49152).save_pretrained(d)
    for f in PIPELINE_TOKENIZER_FILES:
        if (default_model_dir / f).exists():
            shutil.copy2(default_model_dir / f, d / f)
    return d


def run_config(teacher_dir, out, **over):
    """A `minitron run` config of every stage on ``teacher_dir`` at the smallest settings; ``over`` replaces top-level
    keys and updates stage sections."""
    cfg = {
        "output_dir": str(out), "teacher": str(teacher_dir), "data": "python-docs", "seq_len": 32,
        "eval_samples": 4, "report_to": "none",
        "prune": {"target": {"hidden_size": 36, "intermediate_size": 64, "num_hidden_layers": 3},
                  "calib_samples": 4, "val_samples": 2, "batch_size": 2},
        "distill": {"max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 3e-3, "logging_steps": 1,
                    "save_strategy": "steps", "save_steps": 2, "disable_tqdm": True},
        "evaluate": {"max_new_tokens": 4},
        "export": {"formats": ["hf"]},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def write_yaml(tmp_path, cfg, name="run.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


# ------------------------------------------------------------------- evaluation: a local task, MBPP rows, stub servers

MINI_TASK_ITEMS = [
    ("The capital of France is", ["Paris.", "a banana.", "seven.", "blue."], 0),
    ("Water freezes at zero degrees", ["of sadness.", "Celsius.", "in books.", "on Mondays."], 1),
    ("A week has seven", ["rivers.", "colours.", "days.", "kings."], 2),
    ("The sun rises in the", ["drawer.", "soup.", "piano.", "east."], 3),
    ("Python lists are created with square", ["brackets.", "tomatoes.", "hours.", "mountains."], 0),
    ("Two plus two equals", ["green.", "four.", "Tuesday.", "loudly."], 1),
    ("Cats are animals that often", ["evaporate.", "compile.", "purr.", "rust."], 2),
    ("To open a file in Python, call the built-in function", ["apple.", "sleep.", "north.", "open()."], 3),
]


def write_mini_task(d):
    """An lm-eval multiple-choice task ``mini_mc`` of MINI_TASK_ITEMS, written to folder ``d`` (its include path):
    the Hub's task data is unreachable here."""
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"context": c, "choices": ch, "label": y} for c, ch, y in MINI_TASK_ITEMS]
    (d / "mini.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "mini_mc.yaml").write_text(
        f"task: mini_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {d / 'mini.jsonl'}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: context\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return d


def write_random_words(f, documents: int):
    """A jsonl file of ``documents`` texts of 200 random code-ish words (seeded): small local data whose 32-token
    blocks are plentiful and cheap."""
    import random

    rng = random.Random(0)
    words = "def return class import for while if else print value list dict self lambda yield with".split()
    f.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(200))}) + "\n"
                         for _ in range(documents)))
    return f


# MBPP-shaped rows written for the tests (ids follow MBPP's splits: 1-10 prompt, 11-510 test, 511-600 validation)
MBPP_ROWS = [
    {"task_id": 2, "text": "Write a function to return the sum of the squares of the numbers in a list.",
     "code": "def sum_squares(nums):\n    return sum(x * x for x in nums)",
     "test_list": ["assert sum_squares([1, 2, 3]) == 14", "assert sum_squares([]) == 0", "assert sum_squares([-2]) == 4"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 3, "text": "Write a python function to check whether a string reads the same backwards.",
     "code": "def is_palindrome(s):\n    return s == s[::-1]",
     "test_list": ["assert is_palindrome('level') == True", "assert is_palindrome('abc') == False",
                   "assert is_palindrome('') == True"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 4, "text": "Write a function to count the vowels in a string.",
     "code": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
     "test_list": ["assert count_vowels('hello') == 2", "assert count_vowels('xyz') == 0",
                   "assert count_vowels('AEIOU') == 5"], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 11, "text": "Write a python function to find the larger of two numbers.",
     "code": "def maximum(a, b):\n    if a >= b:\n        return a\n    return b",
     "test_list": ["assert maximum(5, 10) == 10", "assert maximum(-1, -2) == -1", "assert maximum(9, 7) == 9"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to reverse the order of the words in a given string.",
     "code": "def reverse_words(s):\n    return ' '.join(s.split()[::-1])",
     "test_list": ["assert reverse_words('python program') == 'program python'",
                   "assert reverse_words('java language') == 'language java'", "assert reverse_words('a') == 'a'"],
     "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 13, "text": "Write a function to compute the n-th Fibonacci number.",
     "code": "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     "test_list": ["assert fibonacci(7) == 13", "assert fibonacci(0) == 0", "assert fibonacci(10) == 55"],
     "test_setup_code": "", "challenge_test_list": ["assert fibonacci(30) == 832040"]},
    {"task_id": 14, "text": "Write a function to find the greatest common divisor of two positive integers.",
     "code": "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
     "test_list": ["assert gcd(12, 18) == 6", "assert gcd(7, 5) == math.gcd(7, 5)", "assert gcd(100, 75) == 25"],
     "test_setup_code": "import math", "challenge_test_list": []},
    {"task_id": 511, "text": "Write a function to return the last element of a list.",
     "code": "def last(xs):\n    return xs[-1]",
     "test_list": ["assert last([1, 2, 3]) == 3", "assert last(['a']) == 'a'", "assert last([0, 0]) == 0"],
     "test_setup_code": "", "challenge_test_list": []},
]


@pytest.fixture
def mbpp_file(tmp_path):
    p = tmp_path / "mbpp.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    return p


class StubServer:
    """A local server answering like vLLM's OpenAI-compatible API: GET /v1/models, POST /v1/completions and
    /v1/chat/completions; ``answer(kind, body) -> text``.
    Every request body is kept in ``requests``."""

    def __init__(self, answer, models=("stub",), roots=None):
        stub = self
        self.answer, self.models, self.requests, self.roots = answer, list(models), [], roots or {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj, code=200):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._send({"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "stub", "max_model_len": 512,
                         **({"root": stub.roots[m]} if m in stub.roots else {})} for m in stub.models]})
                self._send({"error": "not found"}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, body))
                if self.path == "/v1/completions":
                    text = stub.answer("completion", body)
                    if isinstance(text, dict):  # a whole response
                        return self._send(text)
                    for s in body.get("stop") or []:  # as vLLM: the text ends before the first stop string
                        text = text.split(s)[0]
                    return self._send({"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                                       "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                                                    "logprobs": None}]})
                if self.path == "/v1/chat/completions":
                    return self._send({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                       "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                           "role": "assistant", "content": stub.answer("chat", body)}}]})
                self._send({"error": "not found"}, 404)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


MODEL, JUDGE = "stub-model", "stub-judge"


def stub_answer(question: str, turn: int) -> str:
    """What the stub model answers: a number the stub judge turns into the rating (0: no rating)."""
    return f"My answer. <<rating={(len(question) * turn) % 11}>>"


class JudgeStub:
    """An OpenAI-compatible server: GET /v1/models, POST /v1/chat/completions and /v1/completions. The model MODEL
    answers with stub_answer; the judge JUDGE rates an answer with the number it carries (or says
    ``judge_reply``)."""

    def __init__(self):
        self.requests, self.fail, self.judge_reply = [], [], None  # fail: HTTP statuses to answer first
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
                if self.path.rstrip("/") != "/v1/models":
                    return self._send(404, {"error": {"message": "not found"}})
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                             "owned_by": "stub"} for m in (MODEL, JUDGE)]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if stub.fail:
                    code = stub.fail.pop(0)
                    return self._send(code, {"error": {"message": f"stub error {code}", "type": "stub"}},
                                      [("Retry-After", "0")] if code == 429 else ())
                if self.path == "/v1/completions":
                    return self._send(200, {"id": "c", "object": "text_completion", "created": 0, "model":
                                            body["model"], "choices": [{"index": 0, "text": body["prompt"][::-1],
                                                                        "finish_reason": "stop", "logprobs": None}]})
                msgs = body["messages"]
                if body["model"] == MODEL:
                    users = [m["content"] for m in msgs if m["role"] == "user"]
                    text = stub_answer(users[-1], len(users))
                elif stub.judge_reply is not None:
                    text = stub.judge_reply
                else:  # rate the answer under judgment: the last number in the prompt
                    n = int(re.findall(r"<<rating=(\d+)>>", msgs[-1]["content"])[-1])
                    text = f"The answer is fine.\nRating: [[{n}]]" if n else "I cannot rate this."
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self, model=None):
        return [r for r in self.requests if "body" in r and (model is None or r["body"]["model"] == model)]


@pytest.fixture
def stub():
    """A running JudgeStub, shut down after the test."""
    s = JudgeStub()
    yield s
    s.server.shutdown()
    s.server.server_close()


# ---------------------------------------------------------------------------------------------------------- FP8 export

def assert_dequantized_close(orig: dict, out) -> None:
    """The FP8 checkpoint ``out`` dequantizes to ``orig`` (the source's tensors) within e4m3 rounding: FP8 weights
    unclipped and within half an e4m3 step, every other tensor bit-exact (float32 export)."""
    deq = dequantize(out)
    t = load_file(out / "model.safetensors")
    assert set(deq) == set(orig)  # an untied lm_head is exported unquantized; a tied one is not in either
    n_inexact = 0
    for name, w in orig.items():
        if name + "_scale" not in t:
            assert torch.equal(deq[name], w.float()), name  # unquantized: bit-exact
            continue
        scale = t[name + "_scale"].float()
        assert scale >= w.abs().max() / FP8_E4M3_MAX * (1 - 1e-6), name  # no clipping
        # e4m3 has 3 mantissa bits: round-to-nearest error <= 2^-4 relative, 2^-10 * scale among subnormals
        bound = torch.maximum(w.abs() * 2**-4, scale * 2**-10) * (1 + 1e-5)
        err = (deq[name] - w.float()).abs()
        assert (err <= bound).all(), (name, (err / bound).max())
        n_inexact += int((err > 0).sum())
    assert n_inexact > 0  # it really is quantized
