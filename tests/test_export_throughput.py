"""`minitron bench throughput`: same requests for every model, exact output lengths, speedup column."""

import json

import pytest
from conftest import tiny_model

from minitron_hf.cli import main
from minitron_hf.export.throughput import ThroughputConfig, ThroughputError, run_throughput, synthetic_prompts


@pytest.fixture
def pair(tmp_path):
    big = tmp_path / "big"
    tiny_model("llama", num_hidden_layers=8, hidden_size=96, intermediate_size=384).save_pretrained(big)
    small = tmp_path / "small"
    tiny_model("llama", num_hidden_layers=2).save_pretrained(small)
    return big, small


def test_throughput_rows_and_speedup(pair, tmp_path):
    big, small = pair
    cfg = ThroughputConfig(backend="transformers", batch_size=4, lengths=["16/8", "8/16"], num_requests=4,
                           warmup_requests=1, output=str(tmp_path / "r"))
    res = run_throughput([str(big), str(small)], cfg, names=["teacher", "student"])
    a, a2, b, b2 = res["rows"]
    assert [(r["model"], r["input_len"], r["output_len"]) for r in res["rows"]] == [
        ("teacher", 16, 8), ("teacher", 8, 16), ("student", 16, 8), ("student", 8, 16)]
    assert (a["layers"], b["layers"]) == (8, 2) and a["parameters"] > b["parameters"]
    assert a["speedup"] == a2["speedup"] == 1.0 and a["flops_ratio"] == 1.0 and a["meets_target"] is None
    assert a["output_tokens_per_s"] == pytest.approx(4 * 8 / a["seconds"], rel=1e-2)
    assert a["requests_per_s"] == pytest.approx(4 / a["seconds"], rel=1e-2)
    assert b["total_tokens_per_s"] == pytest.approx(b["output_tokens_per_s"] * 3, rel=1e-6)  # (16 + 8) / 8
    assert b["speedup"] > 1.2  # 2 narrow layers vs 8 wide ones
    # the FLOPs ratio is the teacher's FLOPs per request over the student's, at the same lengths
    assert b["flops_ratio"] == pytest.approx(a["flops_per_request"] / b["flops_per_request"]) and b["flops_ratio"] > 2
    assert b["target_speedup"] == pytest.approx(0.9 * b["flops_ratio"])
    assert b["meets_target"] == (b["speedup"] >= b["target_speedup"])
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["rows"][2]["model"] == "student" and saved["config"]["lengths"] == ["16/8", "8/16"]
    assert "| FLOPs ratio |" in (tmp_path / "r" / "results.md").read_text()
    assert (tmp_path / "r" / "throughput.png").stat().st_size > 1000


def test_forward_flops_against_a_count_of_the_matmuls():
    """Naive reference: count every matmul's MACs token by token (prefill and decode alike)."""
    from minitron_hf.arch import forward_flops

    c = tiny_model("llama", num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                   num_key_value_heads=2).config
    hd = c.hidden_size // c.num_attention_heads
    per_token = c.num_hidden_layers * (c.hidden_size * 4 * hd + 2 * c.hidden_size * 2 * hd + 4 * hd * c.hidden_size
                                       + 3 * c.hidden_size * c.intermediate_size) + c.hidden_size * c.vocab_size
    macs = 0
    for t in range(1, 7 + 5 + 1):  # 7 cached tokens, 5 new ones
        attn = c.num_hidden_layers * c.num_attention_heads * t * hd * 2  # q.k over t keys, then weights.v
        if t > 7:
            macs += per_token + attn
    # norm weights sit in the parameter count (< 1% here) but do no matmul
    assert forward_flops(c, 5, context=7) == pytest.approx(2 * macs, rel=1e-2)
    assert forward_flops(c, 12) > forward_flops(c, 5, context=7)


def test_prompts_are_deterministic_and_exclude_specials():
    p = synthetic_prompts(3, 10, 50, exclude=[0, 1, 2], seed=1)
    assert p == synthetic_prompts(3, 10, 50, exclude=[0, 1, 2], seed=1) and len(p) == 3
    assert all(len(x) == 10 and min(x) >= 3 and max(x) < 50 for x in p)


def test_bad_input(pair, tmp_path, capsys):
    big, small = pair
    other = tmp_path / "other"
    tiny_model("llama", vocab_size=256).save_pretrained(other)
    with pytest.raises(ThroughputError, match="different vocabularies"):
        run_throughput([str(big), str(other)], ThroughputConfig(num_requests=1))
    with pytest.raises(ThroughputError, match="exceeds max_position_embeddings=256"):
        run_throughput([str(big)], ThroughputConfig(lengths=["16/16", "200/100"]))
    with pytest.raises(ThroughputError, match="lengths item '128' must be ISL/OSL"):
        run_throughput([str(big)], ThroughputConfig(lengths=["128"]))
    with pytest.raises(ThroughputError, match="batch_size=0"):
        run_throughput([str(big)], ThroughputConfig(batch_size=0))
    with pytest.raises(ThroughputError, match="names: 1 labels for 2 models"):
        run_throughput([str(big), str(small)], ThroughputConfig(), names=["x"])
    assert main(["bench", "throughput", str(big), str(small), "--backend", "transformers", "--batch-size", "2",
                 "--lengths", "8/4", "--num-requests", "2", "--warmup-requests", "0"]) == 0
    out = capsys.readouterr().out
    assert "| model |" in out and str(small) in out
    assert main(["bench", "throughput", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
