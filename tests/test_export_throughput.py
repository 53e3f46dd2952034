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
    cfg = ThroughputConfig(batch_size=4, input_len=16, output_len=8, num_requests=4, warmup_requests=1,
                           output=str(tmp_path / "r"))
    res = run_throughput([str(big), str(small)], cfg)
    a, b = res["rows"]
    assert (a["layers"], b["layers"]) == (8, 2) and a["parameters"] > b["parameters"]
    assert a["speedup"] == 1.0
    assert a["output_tokens_per_s"] == pytest.approx(4 * 8 / a["seconds"], rel=1e-2)
    assert b["total_tokens_per_s"] == pytest.approx(b["output_tokens_per_s"] * 3, rel=1e-6)  # (16 + 8) / 8
    assert b["speedup"] > 1.2  # 2 narrow layers vs 8 wide ones
    assert json.loads((tmp_path / "r" / "results.json").read_text())["rows"][1]["model"] == str(small)
    assert "| speedup |" in (tmp_path / "r" / "results.md").read_text()


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
        run_throughput([str(big)], ThroughputConfig(input_len=200, output_len=100))
    with pytest.raises(ThroughputError, match="batch_size=0"):
        run_throughput([str(big)], ThroughputConfig(batch_size=0))
    assert main(["bench", "throughput", str(big), str(small), "--batch-size", "2", "--input-len", "8",
                 "--output-len", "4", "--num-requests", "2", "--warmup-requests", "0"]) == 0
    out = capsys.readouterr().out
    assert "| model |" in out and str(small) in out
    assert main(["bench", "throughput", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
