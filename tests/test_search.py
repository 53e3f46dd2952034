"""`minitron search`: candidate enumeration within a budget, choice, scoring, the winner as a prune config."""

import json

import pytest
import yaml

from conftest import save_with_tokenizer, tiny_model
from minitron_hf.arch import count_parameters
from minitron_hf.cli import main
from minitron_hf.data import DataConfig
from minitron_hf.pruning.search import SearchConfig, budget_params, choose, enumerate_candidates, run_search
from minitron_hf.pruning.trim import PruneTarget, PruningConfigError, resolve_target


def _config(**kw):
    return tiny_model("llama", hidden_size=128, intermediate_size=256, num_attention_heads=8, num_key_value_heads=2,
                      num_hidden_layers=6, vocab_size=512, **kw).config


def test_enumeration_respects_budget_and_validity_rules():
    c = _config()
    total = count_parameters(c)["total"]
    cfg = SearchConfig(budget=0.6, multiple=16, prune_heads=True, tolerance=0.1)
    budget = budget_params(cfg, total)
    cands, seen = enumerate_candidates(c, cfg, budget)
    assert seen > len(cands) > 5
    for x in cands:
        t = x["target"]
        assert budget * 0.9 <= x["parameters"] <= budget
        resolve_target(c, PruneTarget.from_dict(t))  # the prune validator accepts every candidate
        assert t["hidden_size"] % 16 == 0 and t["intermediate_size"] % 16 == 0 or t["intermediate_size"] == 256
        assert t["hidden_size"] % t["num_attention_heads"] == 0  # LlamaConfig's rule in transformers 5.x
        assert t["num_attention_heads"] % 2 == 0  # whole GQA groups
        assert t["hidden_size"] >= 64 and t["num_hidden_layers"] >= 3  # max prune fractions 0.5
    assert [x["parameters"] for x in cands] == sorted((x["parameters"] for x in cands), reverse=True)
    # a naive enumeration agrees on how many valid targets fit
    naive = 0
    for L in range(3, 7):
        for H in (4, 6, 8):
            for h in [128] + [v for v in range(64, 128, 16)]:
                for i in [256] + [v for v in range(128, 256, 16)]:
                    t = {"hidden_size": h, "intermediate_size": i, "num_attention_heads": H, "num_hidden_layers": L}
                    try:
                        d, _ = resolve_target(c, PruneTarget.from_dict(t))
                    except PruningConfigError:
                        continue
                    n = count_parameters(type(c).from_dict(d))["total"]
                    naive += budget * 0.9 <= n <= budget
    assert naive == len(cands)


def test_choose_spreads_over_depths():
    c = _config()
    cfg = SearchConfig(budget=0.6, multiple=16, tolerance=0.2)
    cands, _ = enumerate_candidates(c, cfg, budget_params(cfg, count_parameters(c)["total"]))
    chosen = choose(cands, 3, 6)
    depths = [x["target"]["num_hidden_layers"] for x in chosen]
    all_depths = {x["target"]["num_hidden_layers"] for x in cands}
    assert len(chosen) == 3 and len(set(depths)) == 3
    assert max(depths) == max(all_depths) and min(depths) == min(all_depths)


def test_bad_input():
    c = _config()
    total = count_parameters(c)["total"]
    with pytest.raises(PruningConfigError, match="budget is required"):
        budget_params(SearchConfig(), total)
    with pytest.raises(PruningConfigError, match="not below the source"):
        budget_params(SearchConfig(budget=total * 2.0), total)
    # value checks run when the config is made (SearchConfig.__post_init__)
    with pytest.raises(PruningConfigError, match="max_width_prune=1.5"):
        SearchConfig(budget=0.5, max_width_prune=1.5)
    with pytest.raises(PruningConfigError, match="top_k=0"):
        SearchConfig(budget=0.5, top_k=0)


@pytest.fixture
def tiny_ckpt(tmp_path, default_model_dir):
    return save_with_tokenizer(tiny_model("llama", hidden_size=128, intermediate_size=256, num_attention_heads=8,
                                          num_key_value_heads=2, num_hidden_layers=6, vocab_size=49152),
                               tmp_path / "tiny", default_model_dir)


@pytest.mark.slow
def test_search_scores_and_writes_a_usable_prune_config(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["search", "--model", str(tiny_ckpt), "--budget", "0.8", "--output", str(out), "--top-k", "3",
                 "--multiple", "16", "--calib-samples", "4", "--val-samples", "4", "--seq-len", "64",
                 "--batch-size", "4", "--distill-tokens", "512", "--tolerance", "0.2"]) == 0
    rec = json.loads((out / "search.json").read_text())
    assert rec["ranked_by"] == "loss_distilled" and len(rec["candidates"]) == 3
    losses = [x["loss_distilled"] for x in rec["candidates"]]
    assert losses == sorted(losses) and all(x["distill_steps"] == 2 for x in rec["candidates"])
    assert all(x["parameters"] <= rec["budget"] for x in rec["candidates"])
    assert "| rank |" in (out / "search.md").read_text() and "| rank |" in capsys.readouterr().out
    assert not list(tmp_path.glob(".search.work"))  # temporary candidates removed
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["target"] == rec["best"] == rec["candidates"][0]["prune_target"]
    pruned = tmp_path / "pruned"
    assert main(["prune", "--config", str(out / "best.yaml"), "--model", str(tiny_ckpt), "--output", str(pruned),
                 "--calib-samples", "4", "--val-samples", "4", "--seq-len", "64"]) == 0
    p = json.loads((pruned / "pruning.json").read_text())["parameters"]["after"]["total"]
    assert p == rec["candidates"][0]["parameters"]  # the analytic count is the real one
    # an output that exists is refused before any work
    assert main(["search", "--model", str(tiny_ckpt), "--budget", "0.8", "--output", str(out)]) == 2
    assert main(["search", "--model", str(tiny_ckpt), "--budget", "0.01", "--output", str(tmp_path / "none"),
                 "--multiple", "16"]) == 2
    assert "no valid candidate" in capsys.readouterr().err


@pytest.mark.slow
def test_search_on_the_default_model(tmp_path):
    rec = run_search(DataConfig(), SearchConfig(budget=0.6, output=str(tmp_path / "s"), top_k=2, calib_samples=8,
                                                val_samples=4, seq_len=64))
    depths = sorted(x["target"]["num_hidden_layers"] for x in rec["candidates"])
    assert len(depths) == 2 and depths[0] < depths[1]  # the shallowest and the deepest shape that fit
    assert all(x["loss_pruned"] < 20 for x in rec["candidates"])


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_moe_enumeration_in_active_parameters(model_type):
    """A budget in active parameters (per token: attention, routers, num_experts_per_tok experts' FFNs): every
    candidate fits it, the prune validator accepts it, and a naive enumeration agrees on how many fit."""
    from minitron_hf.arch import family_of

    family = family_of(tiny_config_of(model_type))
    c = tiny_config_of(model_type)
    mlp, ef = family.mlp_field, family.experts_field
    counts = count_parameters(c)
    assert counts["active"] < counts["total"]
    cfg = SearchConfig(budget=0.7, multiple=16, tolerance=0.15, count="active", prune_experts=True)
    budget = budget_params(cfg, counts["active"])
    cands, seen = enumerate_candidates(c, cfg, budget)
    assert seen > len(cands) > 3
    assert {x["target"][ef] for x in cands} == {4, 3, 2}  # experts 4 -> 2 (max prune 0.5, top-2 routing)
    naive = 0
    for x in cands:
        d, _ = resolve_target(c, PruneTarget.from_dict(x["target"]))
        assert x["parameters"] == count_parameters(type(c).from_dict(d))["active"] <= budget
    for L in range(2, 5):
        for h in (64, 48, 32):
            for i in (128, 112, 96, 80, 64):
                for e in (4, 3, 2):
                    t = {"hidden_size": h, mlp: i, ef: e, "num_hidden_layers": L}
                    d, _ = resolve_target(c, PruneTarget.from_dict(t))
                    naive += budget * 0.85 <= count_parameters(type(c).from_dict(d))["active"] <= budget
    assert naive == len(cands)
    with pytest.raises(PruningConfigError, match="count='active' needs a mixture of experts"):
        from minitron_hf.pruning.search import check_family

        check_family(_config(), SearchConfig(budget=0.5, count="active"))


def tiny_config_of(model_type):
    mlp = {"mixtral": "intermediate_size", "qwen3_moe": "moe_intermediate_size"}[model_type]
    return tiny_model(model_type, hidden_size=64, num_hidden_layers=4, vocab_size=512, **{mlp: 128}).config


@pytest.mark.slow
def test_moe_search_end_to_end(tmp_path, default_model_dir):
    src = save_with_tokenizer(tiny_model("mixtral", hidden_size=64, intermediate_size=128, vocab_size=49152),
                              tmp_path / "moe", default_model_dir)
    out = tmp_path / "search"
    rec = run_search(DataConfig(), SearchConfig(model=str(src), budget=0.8, output=str(out), top_k=2, multiple=16,
                                                tolerance=0.3, count="active", prune_experts=True, calib_samples=4,
                                                val_samples=2, seq_len=32, batch_size=2))
    assert rec["count"] == "active" and all(x["parameters"] <= rec["budget"] for x in rec["candidates"])
    assert "active parameters" in (out / "search.md").read_text()
    best = tmp_path / "best"
    assert main(["prune", "--config", str(out / "best.yaml"),
                 "--model", str(src), "--output", str(best), "--calib-samples", "4", "--val-samples", "2",
                 "--seq-len", "32"]) == 0
    after = json.loads((best / "pruning.json").read_text())["parameters"]["after"]
    assert after["active"] == rec["candidates"][0]["parameters"]  # the analytic active count of the winner


@pytest.mark.slow
def test_hybrid_search_enumerates_mamba_heads_and_refuses_depth(tmp_path, default_model_dir):
    """Nemotron-H: Mamba heads are searched in whole heads per group, every candidate's count is exact (the layers
    are all kept) and accepted by the prune validator; depth is refused by name (a layer count does not fix a
    hybrid's parameter count); the search runs end to end and its best target prunes."""
    from minitron_hf.pruning.search import check_family

    c = tiny_model("nemotron_h", vocab_size=512).config
    with pytest.raises(PruningConfigError, match=r"max_depth_prune=0.5: model_type='nemotron_h' mixes layer types "
                                                 r"\(full_attention, linear_attention, mlp\)"):
        check_family(c, SearchConfig(budget=0.8))
    cfg = SearchConfig(budget=0.9, multiple=16, tolerance=0.2, max_depth_prune=0.0)
    budget = budget_params(cfg, count_parameters(c)["total"])
    cands, seen = enumerate_candidates(c, cfg, budget)
    G, nh = c.n_groups, c.mamba_num_heads
    searched = {x["target"]["mamba_num_heads"] for x in cands}
    assert len(searched) > 1 and min(searched) < nh  # Mamba head counts are searched, pruned ones among them
    assert all(x["target"]["mamba_num_heads"] % G == 0 for x in cands)
    for x in cands:
        d, _ = resolve_target(c, PruneTarget.from_dict(x["target"]))
        assert x["parameters"] == count_parameters(type(c).from_dict(d))["total"] <= budget
    model = tiny_model("nemotron_h", vocab_size=49152)  # the real tokenizer's vocabulary (the embedding dominates)
    src = save_with_tokenizer(model, tmp_path / "hybrid", default_model_dir)
    half = resolve_target(model.config, PruneTarget(mamba_num_heads=nh // 2))[0]
    budget = count_parameters(type(model.config).from_dict(half))["total"]  # an absolute count: half the Mamba heads
    out = tmp_path / "search"
    rec = run_search(DataConfig(), SearchConfig(model=str(src), budget=budget, output=str(out), top_k=2, multiple=16,
                                                tolerance=0.01, max_depth_prune=0.0, calib_samples=4, val_samples=2,
                                                seq_len=32, batch_size=2))
    assert any(x["target"]["mamba_num_heads"] < nh for x in rec["candidates"])
    assert "Mamba)" in (out / "search.md").read_text()
    best = tmp_path / "best"
    assert main(["prune", "--config", str(out / "best.yaml"), "--model", str(src), "--output", str(best),
                 "--calib-samples", "4", "--val-samples", "2", "--seq-len", "32"]) == 0
    after = json.loads((best / "pruning.json").read_text())["parameters"]["after"]
    assert after["total"] == rec["candidates"][0]["parameters"]
