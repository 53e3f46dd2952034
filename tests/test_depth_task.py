"""Depth saliency on downstream accuracy through LM Evaluation Harness (``--depth-metric task:<task>``).

The Hub (lm-eval's task data) is unreachable here: the tests write a small multiple-choice task of
their own, and the built-in ``pydoc_continuation`` task is built from the Python install.
"""

import json

import pytest
import torch

from minitron_hf.cli import main
from minitron_hf.eval.harness import EvalError, check_tasks, evaluate_model, local_tasks_dir, score, task_manager
from minitron_hf.loading import load_model, load_tokenizer
from minitron_hf.pruning.depth import DepthError, layer_importance

from conftest import MINI_TASK_ITEMS, save_with_tokenizer, tiny_model, write_mini_task

pytest.importorskip("lm_eval")

pytestmark = pytest.mark.slow  # lm-eval runs end to end


@pytest.fixture
def tiny(tmp_path, default_model_dir):
    d = save_with_tokenizer(tiny_model("llama", num_hidden_layers=4, vocab_size=49152), tmp_path / "tiny",
                            default_model_dir)
    return d, write_mini_task(tmp_path / "tasks")


def test_accuracy_scan_structure_and_best_block(tiny, tmp_path):
    d, tasks = tiny
    model, tok = load_model(d), load_tokenizer(d)
    li = layer_importance(model, None, 2, metrics=("task:mini_mc",), tokenizer=tok, batch_size=4, progress=False,
                          task_options=dict(include_path=tasks))
    assert li.task == "mini_mc" and len(li.task_accuracy) == 3 and len(li.single_layer_accuracy) == 4
    assert all(a in [i / 8 for i in range(9)] for a in li.task_accuracy + [li.baseline_accuracy])
    best = max(range(3), key=li.task_accuracy.__getitem__)
    assert li.best_block("task:mini_mc") == [best, best + 1]
    # non-contiguous: the 2 layers whose single removal keeps the most accuracy, removed together
    ranked = sorted(range(4), key=lambda i: -li.single_layer_accuracy[i])
    assert li.noncontiguous["layers"] == sorted(ranked[:2])
    assert model.config.num_hidden_layers == 4 and len(model.model.layers) == 4  # restored
    li.save(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "layer_importance.json").read_text())
    assert saved["task"]["name"] == "mini_mc" and saved["task"]["best_contiguous"] == [best, best + 1]
    assert [b["task_accuracy"] for b in saved["blocks"]] == li.task_accuracy
    assert (tmp_path / "out" / "layer_importance.png").stat().st_size > 1000
    with pytest.raises(DepthError, match="no task:other scores"):
        li.best_block("task:other")


def test_skipping_in_memory_equals_the_pruned_checkpoint(tiny, tmp_path):
    """The harness on layers skipped in memory scores what the trimmed, re-loaded checkpoint scores."""
    d, tasks = tiny
    model, tok = load_model(d), load_tokenizer(d)
    manager = task_manager(tasks)
    res = layer_importance(model, None, 2, metrics=("task:mini_mc",), tokenizer=tok, progress=False,
                           task_options=dict(include_path=tasks, noncontiguous=False))
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(d), "--output", str(out), "--target", "drop_layers=1,2",
                 "--calib-samples", "2", "--seq-len", "32"]) == 0
    pruned = evaluate_model(load_model(out), load_tokenizer(out), ["mini_mc"], manager=manager, batch_size=4)
    # per-item log-likelihoods must agree too: compare the full-precision accuracy and the loglikelihoods
    assert score(pruned, "mini_mc") == res.task_accuracy[1]
    from minitron_hf.eval.harness import wrap_model
    from minitron_hf.pruning.depth import dropped_layers

    reqs = [(c, " " + ch[0]) for c, ch, _ in MINI_TASK_ITEMS]
    with dropped_layers(model, [1, 2]):
        skipped = wrap_model(model, tok, 4).loglikelihood([_Req(r) for r in reqs], disable_tqdm=True)
    trimmed = wrap_model(load_model(out), tok, 4).loglikelihood([_Req(r) for r in reqs], disable_tqdm=True)
    torch.testing.assert_close(torch.tensor([x[0] for x in skipped]), torch.tensor([x[0] for x in trimmed]),
                               atol=1e-4, rtol=1e-4)


class _Req:  # the shape of lm-eval's Instance that HFLM.loglikelihood reads
    def __init__(self, args):
        self.args = args


def test_prune_cli_with_task_metric_and_bad_input(tiny, tmp_path, capsys):
    d, tasks = tiny
    out = tmp_path / "depth"
    assert main(["prune", "--model", str(d), "--output", str(out), "--target", "num_hidden_layers=2",
                 "--depth-metric", "task:mini_mc", "--tasks-dir", str(tasks), "--depth-noncontiguous", "false",
                 "--batch-size", "4", "--seq-len", "32"]) == 0
    rec = json.loads((out / "pruning.json").read_text())["depth"]
    assert rec["metric"] == "task:mini_mc" and len(rec["task_accuracy"]) == 3 and rec["noncontiguous"] is None
    best = max(range(3), key=rec["task_accuracy"].__getitem__)
    assert rec["dropped"] == [best, best + 1]
    assert (out / "importance" / "layer_importance.png").exists()
    capsys.readouterr()
    # an unknown task fails before any weights load, with the nearest names
    assert main(["prune", "--model", str(d), "--output", str(tmp_path / "x"), "--target", "num_hidden_layers=2",
                 "--depth-metric", "task:mini_mk", "--tasks-dir", str(tasks), "--seq-len", "32"]) == 2
    err = capsys.readouterr().err
    assert "unknown lm-eval task 'mini_mk'" in err and "did you mean mini_mc" in err
    assert main(["prune", "--model", str(d), "--output", str(tmp_path / "y"), "--target", "num_hidden_layers=2",
                 "--depth-metric", "winogrande"]) == 2
    assert "task:<lm-eval task>" in capsys.readouterr().err
    assert main(["prune", "--model", str(d), "--output", str(tmp_path / "z"), "--target", "num_hidden_layers=2",
                 "--depth-metric", "task:mini_mc", "--tasks-dir", str(tmp_path / "nowhere"), "--seq-len", "32"]) == 2
    assert "tasks_dir=" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("x", "y", "z"))


def test_check_tasks_suggests():
    manager = task_manager()
    assert check_tasks(["pydoc_continuation"], manager) == ["pydoc_continuation"]
    with pytest.raises(EvalError, match="did you mean.*winogrande"):
        check_tasks(["winogrand"], manager)
    with pytest.raises(EvalError, match="at least one"):
        check_tasks([], manager)


@pytest.mark.slow
def test_pydoc_continuation_is_real_and_the_default_model_beats_chance(default_model_dir):
    d = local_tasks_dir() / "pydoc_continuation"
    rows = [json.loads(x) for x in (d / "test.jsonl").read_text().splitlines()]
    assert len(rows) >= 100 and all(len(r["choices"]) == 4 and 0 <= r["label"] < 4 for r in rows)
    assert all(r["context"] and len(set(r["choices"])) == 4 for r in rows)
    labels = [r["label"] for r in rows]
    assert max(labels.count(i) for i in range(4)) < 0.4 * len(rows)  # answer positions are balanced
    res = evaluate_model(load_model(default_model_dir), load_tokenizer(default_model_dir), ["pydoc_continuation"],
                         num_fewshot=0, limit=30)
    assert score(res, "pydoc_continuation") > 0.5  # chance is 0.25; SmolLM2-135M: 0.767 on these 30 items
