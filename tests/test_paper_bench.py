"""The paper reproductions (benchmarks/paper/): the students they compare, and every script end to end
on a tiny teacher (real tokenizer, real data, real pruning/distillation/lm-eval, a few steps)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_with_tokenizer, tiny_model

from minitron_hf.arch import count_parameters
from minitron_hf.distill.trainer import eval_curve

PAPER = Path(__file__).resolve().parents[1] / "benchmarks" / "paper"
SCRIPTS = ["fig5_init", "fig3_4_correction", "fig6_width_depth", "fig7_8_depth", "table15_reducers", "practices",
           "seed_noise"]


@pytest.fixture(scope="module")
def lib():
    sys.path.insert(0, str(PAPER))
    import lib as paper_lib

    yield paper_lib
    sys.path.remove(str(PAPER))


def test_axis_students_have_equal_parameters(lib, default_model_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(default_model_dir)
    targets = lib.axis_targets(cfg)
    assert targets["heads"] == {"num_attention_heads": 6, "num_key_value_heads": 3}
    counts = {}
    for name, t in targets.items():
        counts[name] = count_parameters(type(cfg).from_dict({**cfg.to_dict(), **t}))["non_embedding"]
        assert counts[name] < count_parameters(cfg)["non_embedding"]
    assert max(counts.values()) - min(counts.values()) < 1e-3 * counts["heads"]
    assert lib.width_target(cfg) == {"hidden_size": 432, "intermediate_size": 768}  # the demo's student


def test_eval_curve_orders_steps_and_keeps_the_last_evaluation_of_a_step():
    history = [{"loss": 3.0, "step": 2}, {"eval_student_lm_loss": 2.5, "eval_runtime": 1.0, "step": 2},
               {"eval_student_lm_loss": 2.0, "step": 4}, {"eval_student_lm_loss": 1.9, "step": 4}]
    curve = eval_curve(history, 100, {"before_student_lm_loss": 4.0, "before_runtime": 3})
    assert curve == [{"step": 0, "tokens": 0, "student_lm_loss": 4.0},
                     {"step": 2, "tokens": 200, "student_lm_loss": 2.5},
                     {"step": 4, "tokens": 400, "student_lm_loss": 1.9}]


def test_headline_flags_verdicts_within_seed_noise(lib, tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "RESULTS", tmp_path)
    (tmp_path / "paper").mkdir()
    rows = [["claim A", "1.50 vs 1.53", "yes", lib.gap(1.50 - 1.53, "main")],  # 0.03 < 0.04: flagged
            ["claim B", "1.50 vs 1.53", "yes", lib.gap(0.03, "short")],  # 0.03 > 0.01: not flagged
            ["claim C", "ranks", "**no**"]]  # no loss gap: never flagged
    (tmp_path / "paper" / "fig5.json").write_text(json.dumps({"headline": rows}))
    assert "| claim A | 1.50 vs 1.53 | yes |" in lib.headline_table()  # before seed_noise.py ran: no noise known
    (tmp_path / "paper" / "seeds.json").write_text(json.dumps({"headline": [], "range_main": 0.04, "range_short": 0.01}))
    table = lib.headline_table()
    assert "| claim A | 1.50 vs 1.53 | yes (gap 0.030, within the width run's seed noise 0.040) |" in table
    assert "| claim B | 1.50 vs 1.53 | yes |" in table and "| claim C | ranks | **no** |" in table
    with pytest.raises(ValueError, match="budget='long'"):
        lib.gap(0.1, "long")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_every_script_runs_on_a_tiny_teacher_and_shares_artifacts(tmp_path, default_model_dir):
    teacher = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "teacher", default_model_dir)
    env = {**os.environ, "MINITRON_PAPER_TEACHER": str(teacher), "MINITRON_PAPER_SCALE": "0.125",
           "MINITRON_PAPER_WORK": str(tmp_path / "work"), "MINITRON_PAPER_RESULTS": str(tmp_path / "results"),
           "MINITRON_PAPER_SEQ": "32", "MINITRON_PAPER_BATCH": "2", "MINITRON_PAPER_VAL": "2",
           "MINITRON_PAPER_CALIB": "4", "OMP_NUM_THREADS": "1"}
    for script in SCRIPTS:
        r = subprocess.run([sys.executable, str(PAPER / f"{script}.py")], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    results = tmp_path / "results"
    md = (results / "paper.md").read_text()
    keys = ["fig5", "fig3_4", "fig6", "fig7_8", "table15", "practices", "seeds"]
    for key in keys:
        data = json.loads((results / "paper" / f"{key}.json").read_text())
        assert data["wall_time_s"] > 0 and data["budget"] and data["machine"]
        assert (results / "paper" / f"{key}.png").stat().st_size > 1000
        assert md.count(f"<!-- {key} -->") == 1 and "**Does it hold here?**" in md
        if key not in ("fig7_8", "seeds"):  # every loss comparison carries the gap its verdict rests on
            assert all(row[3]["gap"] >= 0 and row[3]["budget"] in ("main", "short") for row in data["headline"])
    fig5 = json.loads((results / "paper" / "fig5.json").read_text())
    assert len(fig5["runs"]) == 4 and all(len(r["curve"]) >= 2 for r in fig5["runs"].values())
    assert fig5["runs"]["(a) random init + KD"]["curve"][0]["tokens"] == 0
    # the width student and its distillation are built once and reused by fig3_4, fig6, table15, practices
    work = tmp_path / "work"
    names = [p.name for p in work.iterdir()]
    assert len([n for n in names if re.fullmatch(r"(prune-width|train-width-kd)-[0-9a-f]{10}", n)]) == 2
    # rerunning a script rewrites its own section only
    before = md
    r = subprocess.run([sys.executable, str(PAPER / "fig6_width_depth.py")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    after = (results / "paper.md").read_text()
    assert all(after.count(f"<!-- {k} -->") == 1 for k in keys)
    assert after.split("<!-- fig5 -->")[1].split("<!-- /fig5 -->")[0] == \
        before.split("<!-- fig5 -->")[1].split("<!-- /fig5 -->")[0]
