"""`minitron eval loss`: validation LM loss and perplexity of checkpoints (the table the old `minitron evaluate`
printed, now a suite), and the old name refused with the new one."""

import json
import math

import pytest

from minitron_hf.cli import main
from minitron_hf.data import DataConfig
from minitron_hf.errors import EXIT_USER_ERROR
from minitron_hf.lm_loss import validation_loss

from conftest import write_random_words


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """Small local text: a validation split of a few 32-token blocks."""
    return write_random_words(tmp_path_factory.mktemp("data") / "docs.jsonl", 200)


def test_eval_loss_prints_the_table_and_writes_the_results(tmp_path, default_model_dir, text_file, capsys):
    from conftest import save_with_tokenizer, tiny_model

    d = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "tiny", default_model_dir)
    out = tmp_path / "out"
    assert main(["eval", "loss", str(d), "--data", str(text_file), "--samples", "2", "--seq-len", "32",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed[printed.index("validation split of"):].strip().splitlines()  # after what libraries print
    assert lines[0] == f"validation split of {str(text_file)!r}, 2 x 32 tokens"
    assert lines[1].split() == ["model", "params", "non-emb", "val", "loss", "ppl"]
    loss = validation_loss(d, DataConfig(data=str(text_file)), samples=2, seq_len=32)
    row = lines[2].split()
    assert len(lines) == 3 and row[0] == str(d) and float(row[3]) == pytest.approx(loss, abs=1e-3)
    r = json.loads((out / "results.json").read_text())["results"][str(d)]
    assert r["val_loss"] == pytest.approx(loss) and r["perplexity"] == pytest.approx(math.exp(loss))
    assert r["params_total"] > r["params_non_embedding"] > 0
    assert (out / "results.md").read_text() == "\n".join(lines) + "\n"  # what it printed


def test_eval_loss_refuses_a_missing_model(tmp_path, text_file, capsys):
    # bad option values: tests/test_eval_suites.py (BAD)
    assert main(["eval", "loss", str(tmp_path / "nope"), "--data", str(text_file)]) == EXIT_USER_ERROR
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["evaluate", "m", "--samples", "2", "--seq-len", "32"], ["evaluate"],
                                  ["evaluate", "--help"], ["-v", "evaluate", "--data", "x", "m", "n"]],
                         ids=["options", "bare", "help", "verbose"])
def test_the_old_name_evaluate_is_refused_with_the_new_one(argv, capsys):
    assert main(argv) == EXIT_USER_ERROR  # before any work: no model, no data
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["minitron evaluate: error: renamed: use `minitron eval loss` (same options)"]
    assert captured.out == ""
