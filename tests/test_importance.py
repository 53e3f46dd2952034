"""Importance estimation against a naive reference that stores every activation."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from minitron_hf.pruning.importance import (AGGREGATIONS, ChannelReducer, Importance, ImportanceError,
                                            estimate_importance, parse_aggregation, random_importance)

from conftest import check_hybrid_importance, naive_moe_scores, naive_reduce, tiny_model


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_reducer_matches_naive(aggregation):
    g = torch.Generator().manual_seed(0)
    batch_agg, seq_agg = parse_aggregation(aggregation)
    r = ChannelReducer((5,), batch_agg, seq_agg, "cpu")
    xs, ms = [], []
    for _ in range(3):  # three batches streamed through one accumulator
        x = torch.rand(4, 7, 5, generator=g)
        m = (torch.rand(4, 7, generator=g) > 0.3).long()
        m[0] = 0  # an all-padding sample counts nowhere
        r.update(x, m)
        xs.append(x)
        ms.append(m)
    torch.testing.assert_close(r.result(), naive_reduce(torch.cat(xs), torch.cat(ms), batch_agg, seq_agg))


def _capture(model, ids):
    """Naive reference: store every activation the scores are defined on."""
    acts = {"heads": [], "neurons": [], "hidden": []}
    hd, H = model.config.head_dim, model.config.num_attention_heads
    hs = []
    for layer in model.model.layers:
        hs.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a: acts["heads"].append(a[0].view(*a[0].shape[:-1], H, hd).norm(dim=-1))))
        if hasattr(layer.mlp, "down_proj"):  # mixtures of experts: naive_moe_scores
            hs.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: acts["neurons"].append(a[0].abs())))
        hs.append(layer.input_layernorm.register_forward_hook(lambda m, a, o: acts["hidden"].append(o.abs())))
        # the norm whose output feeds the MLP: Gemma's pre-feed-forward norm (its post-attention norm normalises the
        # attention output before the residual add), the post-attention norm in Llama-style layers
        mlp_norm = getattr(layer, "pre_feedforward_layernorm", None) or layer.post_attention_layernorm
        hs.append(mlp_norm.register_forward_hook(lambda m, a, o: acts["hidden"].append(o.abs())))
    with torch.no_grad():
        model(ids)
    for h in hs:
        h.remove()
    return acts


@pytest.mark.parametrize("aggregation", ["l2_mean", "mean_max", "max_l2"])
def test_estimate_importance_matches_naive(model_type, aggregation):
    model = tiny_model(model_type)
    ids = torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(0))
    if hasattr(model.model, "embeddings"):  # a hybrid Nemotron-H: probes per layer type
        check_hybrid_importance(model, ids, torch.ones(6, 16), aggregation)
        return
    imp = estimate_importance(model, ids, aggregation, batch_size=6, progress=False)
    acts = _capture(model, ids)
    ones = torch.ones(6, 16)
    b, s = parse_aggregation(aggregation)
    L = model.config.num_hidden_layers
    for l in range(L):
        torch.testing.assert_close(imp.heads[l], naive_reduce(acts["heads"][l], ones, b, s))
        if imp.experts is None:
            torch.testing.assert_close(imp.neurons[l], naive_reduce(acts["neurons"][l], ones, b, s))
    if imp.experts is not None:
        experts, neurons = naive_moe_scores(model, ids, ones, b, s)
        assert (experts > 0).all()  # every expert was routed some tokens: its neuron scores are defined
        torch.testing.assert_close(imp.experts, experts, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(imp.neurons, neurons, rtol=1e-5, atol=1e-6)
    hidden = sum(naive_reduce(h, ones, b, s) for h in acts["hidden"])
    torch.testing.assert_close(imp.hidden, hidden, rtol=1e-5, atol=1e-5)


def test_padding_is_ignored_and_lm_head_not_run():
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 128, (1, 16), generator=g), torch.randint(0, 128, (1, 10), generator=g)
    padded = torch.cat([a, torch.cat([b, torch.zeros(1, 6, dtype=torch.long)], 1)])
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    calls = []
    model.lm_head.register_forward_hook(lambda *x: calls.append(1))
    padded_imp = estimate_importance(model, [{"input_ids": padded, "attention_mask": mask}], progress=False)
    sep_imp = estimate_importance(model, [{"input_ids": a}, {"input_ids": b}], progress=False)
    assert calls == []
    torch.testing.assert_close(padded_imp.heads, sep_imp.heads, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded_imp.neurons, sep_imp.neurons, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded_imp.hidden, sep_imp.hidden, rtol=1e-4, atol=1e-4)
    assert padded_imp.meta["tokens"] == 26


def test_save_load_and_shape_check(tmp_path):
    model = tiny_model("qwen3")
    imp = random_importance(model.config, seed=3)
    imp.save(tmp_path / "s")
    back = Importance.load(tmp_path / "s")
    assert torch.equal(back.heads, imp.heads) and back.meta["aggregation"] == "random"
    back.check_matches(model.config)
    with pytest.raises(ImportanceError, match="do not match the model"):
        back.check_matches(tiny_model("qwen3", intermediate_size=80).config)


def test_bad_aggregation_names_choices():
    with pytest.raises(ImportanceError, match="mean, l2, l1, max"):
        parse_aggregation("l3_mean")


def _dp_worker(rank, world, port, ids, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = tiny_model("mistral")
        shard = ids[rank::world]
        imp = estimate_importance(model, shard, "l2_mean", batch_size=2, progress=False)
        if rank == 0:
            torch.save({"heads": imp.heads, "neurons": imp.neurons, "hidden": imp.hidden}, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.multiprocess
def test_data_parallel_all_reduce_equals_single_process(tmp_path):
    ids = torch.randint(0, 128, (8, 12), generator=torch.Generator().manual_seed(2))
    single = estimate_importance(tiny_model("mistral"), ids, "l2_mean", batch_size=2, progress=False)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp_worker, args=(2, port, ids, str(tmp_path / "r.pt")), nprocs=2)
    dp = torch.load(tmp_path / "r.pt")
    torch.testing.assert_close(dp["heads"], single.heads)
    torch.testing.assert_close(dp["neurons"], single.neurons)
    torch.testing.assert_close(dp["hidden"], single.hidden, rtol=1e-5, atol=1e-5)
