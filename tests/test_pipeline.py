"""`minitron run`: every stage end to end on a tiny teacher, skip / rerun / resume rules, the report,
and every bad config failing before any work."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoModelForCausalLM

from minitron_hf.cli import main
from minitron_hf.config import ConfigError
from minitron_hf.pipeline import PipelineError, gap_recovered, load_run, read_done, run_pipeline

from conftest import run_config, save_with_tokenizer, tiny_model, write_yaml

pytestmark = pytest.mark.slow  # `minitron run` end to end


# --------------------------------------------------------------------------------------------------
# One full run of every stage, then reruns of it: the runs are done once (module fixtures), the checks are one test
# per behaviour, so that a failing one does not hide the others.
# --------------------------------------------------------------------------------------------------

DISTILL_2 = "distill.max_steps=2"
WIDTH_48 = "prune.target={hidden_size: 36, intermediate_size: 48, num_hidden_layers: 3}"
DEPTH_2 = "prune.target={hidden_size: 36, intermediate_size: 48, num_hidden_layers: 2}"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, default_model_dir):
    """Every stage run once on a tiny teacher. The reruns (:func:`reruns`) then replace some of its outputs, so the
    run folder is copied as the first run left it (``first``, less the trainer checkpoints no test reads), and the
    records the reruns rewrite are read now."""
    tmp = tmp_path_factory.mktemp("full_run")
    teacher = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp / "teacher", default_model_dir)
    out = tmp / "run"
    path = write_yaml(tmp, run_config(teacher, out))
    status = run_pipeline(load_run(path))
    first = tmp / "first"
    shutil.copytree(out, first, symlinks=True, ignore=shutil.ignore_patterns("checkpoint-*"))
    return SimpleNamespace(path=path, out=out, first=first, status=status,
                           data=read_done(load_run(path), "data")["result"],
                           importance=read_done(load_run(path), "importance")["result"])


@pytest.fixture(scope="module")
def reruns(full_run):
    """The first run's config run again, then changed step by step. Each step starts from the state the one before
    left, so they run here, in this order, once; what each test checks is kept right after its step."""
    path, out = full_run.path, full_run.out
    r = SimpleNamespace()
    r.unchanged = run_pipeline(load_run(path))
    r.distill_changed = run_pipeline(load_run(path, overrides=[DISTILL_2]))
    r.distill_steps = read_done(load_run(path), "distill")["result"]["summary"]["steps"]
    r.only = run_pipeline(load_run(path, overrides=[DISTILL_2]), only="evaluate")
    r.width = run_pipeline(load_run(path, overrides=[DISTILL_2, WIDTH_48]))
    r.width_intermediate_size = AutoModelForCausalLM.from_pretrained(out / "prune" / "model").config.intermediate_size
    r.depth = run_pipeline(load_run(path, overrides=[DISTILL_2, DEPTH_2]))
    r.depth_drop_layers = read_done(load_run(path), "importance")["result"]["drop_layers"]
    return r


def test_full_run_runs_every_configured_stage(full_run):
    status, first = full_run.status, full_run.first
    assert status == {s: "ran" for s in ("data", "importance", "prune", "distill", "evaluate", "export")}
    data = full_run.data
    assert (Path(data["config"]) / "manifest.json").is_file() and data["splits"][0]["train"] > 0
    for s in status:
        assert (first / s / "done.json").exists() and (first / s / "config.json").exists()


def test_full_run_prunes_depth_and_width_from_one_importance_stage(full_run):
    # depth and width from one importance stage: the layer scan picked the dropped layer
    imp, first = full_run.importance, full_run.first
    assert len(imp["drop_layers"]) == 1 and (first / "importance" / "scores" / "importance.safetensors").exists()
    student = AutoModelForCausalLM.from_pretrained(first / "prune" / "model")
    c = student.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (36, 64, 3)
    kept_layers = json.loads((first / "prune" / "model" / "pruning.json").read_text())["kept"]["layers"]
    assert imp["drop_layers"][0] not in kept_layers


def test_full_run_evaluates_every_model_on_the_same_tokens(full_run):
    # evaluation: every model on the same tokens; gap recovered is computed from those numbers
    ev = json.loads((full_run.first / "evaluate" / "evaluation.json").read_text())
    assert set(ev["models"]) == {"teacher", "pruned", "distilled"}
    m = ev["models"]
    assert ev["gap_recovered"] == pytest.approx(gap_recovered(m["pruned"]["val_loss"], m["distilled"]["val_loss"],
                                                              m["teacher"]["val_loss"]))
    assert m["distilled"]["params_total"] == m["pruned"]["params_total"] < m["teacher"]["params_total"]


def test_full_run_exports_the_distilled_student_with_a_model_card(full_run):
    first = full_run.first
    m = json.loads((first / "evaluate" / "evaluation.json").read_text())["models"]
    # the export is a vanilla checkpoint equal to the distilled student
    exported = AutoModelForCausalLM.from_pretrained(first / "export" / "hf")
    distilled = AutoModelForCausalLM.from_pretrained(first / "distill" / "final")
    for (k, a), (_, b) in zip(exported.state_dict().items(), distilled.state_dict().items()):
        assert a.equal(b), k
    provenance = json.loads((first / "export" / "hf" / "minitron.json").read_text())
    assert provenance["stages"]["distill"]["tokens"] == 4 * 2 * 32
    card = (first / "export" / "hf" / "README.md").read_text()  # the model card `minitron publish` uploads
    assert "## Architecture" in card and "## Evaluation" in card and "distilled" in card
    assert "\n# teacher-minitron-run\n" in card  # titled after the teacher and the run, not "final"
    assert f"{m['distilled']['val_loss']:.3f}"[:4] in card


def test_full_run_writes_the_report(full_run):
    first = full_run.first
    report = (first / "report.md").read_text()
    for heading in ("## Stages", "## Architecture", "## Importance", "## Training", "## Evaluation", "## Artifacts"):
        assert heading in report
    assert "distill/curves.png" in report and (first / "distill" / "curves.png").exists()
    assert "Gap recovered" in report and (first / "importance" / "scores" / "layer_importance.png").exists()


def test_rerun_skips_every_stage(reruns):
    assert set(reruns.unchanged.values()) == {"skipped (done)"}


def test_changed_distill_options_rerun_distill_and_what_reads_it(reruns):
    # changing distillation options re-runs distill and what reads it, not importance or prune
    assert reruns.distill_changed == {"data": "skipped (done)", "importance": "skipped (done)",
                                      "prune": "skipped (done)", "distill": "ran", "evaluate": "ran", "export": "ran"}
    assert reruns.distill_steps == 2


def test_only_runs_that_stage_alone_even_when_done(reruns):
    assert reruns.only == {"evaluate": "ran"}


def test_new_width_target_reruns_prune_and_reuses_the_scores(reruns):
    # a new width target re-runs prune and everything after it, reusing the importance scores
    status = reruns.width
    assert status["importance"] == "skipped (done)" and status["prune"] == "ran" and status["distill"] == "ran"
    assert reruns.width_intermediate_size == 48


def test_new_depth_needs_a_new_layer_scan(reruns):
    status = reruns.depth
    assert status["importance"] == "ran" and len(reruns.depth_drop_layers) == 2


def test_interrupted_distill_resumes_from_its_checkpoint(teacher_dir, tmp_path):
    out = tmp_path / "run"
    path = write_yaml(tmp_path, run_config(teacher_dir, out, export=None))
    run_pipeline(load_run(path))
    full = read_done(load_run(path), "distill")["result"]["summary"]
    # simulate a crash after checkpoint-2: no done marker, no final model, no later checkpoint
    (out / "distill" / "done.json").unlink()
    shutil.rmtree(out / "distill" / "final")
    shutil.rmtree(out / "distill" / "checkpoint-4")
    status = run_pipeline(load_run(path))
    assert status["distill"] == "resumed" and status["prune"] == "skipped (done)"
    resumed = read_done(load_run(path), "distill")["result"]["summary"]
    assert resumed["steps"] == 4
    assert resumed["after"]["eval_student_lm_loss"] == pytest.approx(full["after"]["eval_student_lm_loss"], abs=1e-4)
    # a crash before the first checkpoint: the stage had started (config.json) but saved nothing; it starts over
    # (Trainer refuses resume_from_checkpoint=True without a checkpoint; found by killing `make demo` mid-step)
    (out / "distill" / "done.json").unlink()
    for p in list((out / "distill").glob("checkpoint-*")) + [out / "distill" / "final"]:
        shutil.rmtree(p)
    status = run_pipeline(load_run(path))
    assert status["distill"] == "resumed" and read_done(load_run(path), "distill")["result"]["summary"]["steps"] == 4


def test_cli_run_and_from(teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    path = write_yaml(tmp_path, run_config(teacher_dir, out, distill=None, export=None,
                                           prune={"target": {"intermediate_size": 64}}))
    assert main(["run", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "prune       ran" in printed and "report:" in printed and "distill" not in printed
    assert main(["run", str(path), "--from", "prune"]) == 0
    printed = capsys.readouterr().out
    assert "importance  skipped (done)" in printed and "prune       ran" in printed and "evaluate    ran" in printed


@pytest.mark.parametrize("change, message", [
    ({"prun": {"target": {"hidden_size": 36}}}, "did you mean 'prune'"),
    ({"distill": {"max_step": 3}}, "did you mean 'max_steps'"),
    ({"distill": {"teacher": "x"}}, "'teacher' is set by the pipeline"),
    ({"prune": {"output": "x", "target": {"hidden_size": 36}}}, "'output' is set by the pipeline"),
    ({"prune": {"calib_samples": 4}}, "section 'prune' with a 'target' is required"),
    ({"prune": {"target": {"hidden_size": 999}}}, "hidden_size"),
    ({"prune": {"target": {"hiden_size": 36}}}, "did you mean 'hidden_size'"),
    ({"export": {"formats": ["gguf"]}}, "formats=['gguf']; allowed: hf, fp8"),
    ({"export": {"fp8_calib_samples": 0}}, "fp8_calib_samples=0"),
    ({"distill": {"kd_loss": "kl"}}, "kd_loss='kl'"),
    ({"output_dir": None}, "output_dir is required"),
    ({"distill": "yes"}, "section 'distill' must be a mapping"),
    ({"report_to": "wandb"}, "report_to='wandb'"),
    # a value a suite config's own __post_init__ refuses still names where it came from
    ({"evaluate": {"benchmarks": {"humaneval": {"samples": 0}}}}, "section 'evaluate': benchmarks.humaneval: samples=0"),
])
def test_bad_configs_fail_before_any_work(teacher_dir, tmp_path, change, message):
    import importlib.util

    if change.get("report_to") == "wandb" and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    cfg = run_config(teacher_dir, tmp_path / "run")
    for k, v in change.items():
        if k == "prun":
            cfg.pop("prune")
        cfg[k] = v
    with pytest.raises((PipelineError, ConfigError, ValueError), match=None) as e:
        load_run(write_yaml(tmp_path, cfg))
    assert message in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing written


def test_bad_stage_selection(teacher_dir, tmp_path):
    run = load_run(write_yaml(tmp_path, run_config(teacher_dir, tmp_path / "run", export=None)))
    with pytest.raises(PipelineError, match="'distil' is not a stage"):
        run_pipeline(run, from_stage="distil")
    with pytest.raises(PipelineError, match="'export': that stage is not configured"):
        run_pipeline(run, only="export")
    with pytest.raises(PipelineError, match="needs the output of prune"):
        run_pipeline(run, only="distill")
    with pytest.raises(PipelineError, match="SECTION.KEY=VALUE"):
        load_run(write_yaml(tmp_path, run_config(teacher_dir, tmp_path / "run")), overrides=["distil.max_steps=3"])
    assert not (tmp_path / "run").exists()


def test_set_overrides_are_typed(teacher_dir, tmp_path):
    path = write_yaml(tmp_path, run_config(teacher_dir, tmp_path / "run"))
    run = load_run(path, overrides=["distill.save_strategy=no", "distill.learning_rate=1e-4", "seq_len=16",
                                    "distill.lr_scheduler_kwargs={min_lr: 1.0e-5}"])
    from minitron_hf.pipeline.distill import STAGE

    script, args = STAGE.options(run)  # what the trainer gets: typed ("1e-4" is a str in YAML 1.1)
    assert args.save_strategy == "no" and args.learning_rate == 1e-4 and script.seq_len == 16
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-5}


def test_recipe_configs_load(tmp_path):
    import re

    import yaml
    from pathlib import Path

    paths = sorted((Path(__file__).parents[1] / "recipes" / "configs").glob("*/minitron-*.yaml"))
    assert len(paths) >= 5
    for p in paths:  # the big teachers are Hub ids: check fields and values, not the model itself
        # the global batch is checked against this launch's processes at load: here one process does the
        # accumulation of the launch line's N (tests/test_recipes.py checks the N-process arithmetic itself)
        m = re.search(r"--num_processes (\d+)", p.read_text())
        raw = yaml.safe_load(p.read_text())
        scaled = [s for s in ("correct", "distill") if isinstance(raw.get(s), dict) and "global_batch_size" in raw[s]]
        for s in scaled:
            raw[s]["gradient_accumulation_steps"] *= int(m.group(1)) if m else 1
        one = p
        if scaled:
            one = tmp_path / p.parent.name / p.name
            one.parent.mkdir(exist_ok=True)
            one.write_text(yaml.safe_dump(raw))
        run = load_run(one, check_model=p.parent.name == "smollm2-135m")
        assert run.sections["prune"]["target"] and run.enabled("distill"), p


def test_depth_by_task_accuracy_in_the_run(teacher_dir, tmp_path):
    """`prune.depth_metric: task:<task>` reaches the importance stage; the block with the best accuracy goes."""
    pytest.importorskip("lm_eval")
    from conftest import write_mini_task

    tasks = write_mini_task(tmp_path / "tasks")
    out = tmp_path / "run"
    cfg = run_config(teacher_dir, out, prune={"target": {"num_hidden_layers": 2}, "depth_metric": "task:mini_mc",
                                              "tasks_dir": str(tasks), "depth_noncontiguous": False})
    status = run_pipeline(load_run(write_yaml(tmp_path, cfg)), only="importance")
    assert status == {"importance": "ran"}
    res = read_done(load_run(write_yaml(tmp_path, cfg)), "importance")["result"]
    scan = json.loads((out / "importance" / "scores" / "layer_importance.json").read_text())
    acc = [b["task_accuracy"] for b in scan["blocks"]]
    best = max(range(len(acc)), key=acc.__getitem__)
    assert res["drop_layers"] == [best, best + 1] and res["task_evaluations"] == 1 + len(acc)


def test_align_stage_sft_and_rounds_in_the_run(teacher_dir, tmp_path, default_model_dir):
    """`align:` runs SFT stages then RPO rounds on the distilled student; evaluate adds it, export ships it."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from conftest import save_with_tokenizer, tiny_config

    torch.manual_seed(0)
    rm = save_with_tokenizer(AutoModelForSequenceClassification.from_config(
        tiny_config("llama", vocab_size=49152, num_labels=1)), tmp_path / "rm", default_model_dir)
    out = tmp_path / "run"
    cfg = run_config(teacher_dir, out, align={
        "sft": [{"data": "builtin:math-code", "max_samples": 4, "max_steps": 1, "per_device_train_batch_size": 2,
                 "max_length": 64}],
        "rounds": {"rounds": 1, "samples": 2, "train_prompts": 3, "heldout_prompts": 2, "max_new_tokens": 6,
                   "max_steps": 1, "per_device_train_batch_size": 2, "max_length": 96, "reward": f"model:{rm}",
                   "generation_backend": "transformers"}})
    status = run_pipeline(load_run(write_yaml(tmp_path, cfg)))
    assert status["align"] == "ran"
    res = read_done(load_run(write_yaml(tmp_path, cfg)), "align")["result"]
    assert res["model"] == str(out / "align" / "rounds" / "round_1" / "final")
    assert res["sft"][0]["steps"] == 1 and [r["round"] for r in res["rounds"]["rounds"]] == [0, 1]
    ev = json.loads((out / "evaluate" / "evaluation.json").read_text())
    assert set(ev["models"]) == {"teacher", "pruned", "distilled", "aligned"}
    exported = AutoModelForCausalLM.from_pretrained(out / "export" / "hf").state_dict()
    aligned = AutoModelForCausalLM.from_pretrained(res["model"]).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in aligned.items())
    report = (out / "report.md").read_text()
    assert "## Alignment" in report and "| start (SFT) |" in report
    # bad align sections fail at load, before any work
    for change, message in (({"sft": [{"dta": "x"}]}, "sft[0]: unknown field 'dta'; did you mean 'data'"),
                            ({"rounds": {"samples": 1}}, "samples=1 must be >= 2"),
                            ({"rounds": {"model": "x"}}, "'model' is set by the pipeline")):
        with pytest.raises((PipelineError, ConfigError, ValueError)) as e:
            load_run(write_yaml(tmp_path, run_config(teacher_dir, tmp_path / "bad", align=change)))
        assert message in str(e.value)
    assert not (tmp_path / "bad").exists()


def test_evaluate_benchmarks_run_eval_suites_and_link_tables(teacher_dir, tmp_path):
    """`evaluate.benchmarks` runs `minitron eval <suite>` on teacher and students; the report shows the table."""
    pytest.importorskip("lm_eval")
    from conftest import write_mini_task

    tasks = write_mini_task(tmp_path / "tasks")
    out = tmp_path / "run"
    cfg = run_config(teacher_dir, out, export=None, distill=None,
                     evaluate={"max_new_tokens": 0,
                               "benchmarks": {"base": {"tasks": ["mini_mc"], "tasks_dir": str(tasks), "limit": 4}}})
    run_pipeline(load_run(write_yaml(tmp_path, cfg)))
    ev = json.loads((out / "evaluate" / "evaluation.json").read_text())
    res = ev["benchmarks"]["base"]["results"]
    assert set(res) == {"teacher", "pruned"} and all(0 <= r["mini_mc"] <= 1 for r in res.values())
    report = (out / "report.md").read_text()
    assert "Benchmarks: `minitron eval base` ([evaluate/base/results.md](evaluate/base/results.md))" in report
    assert (out / "evaluate" / "base" / "results.md").read_text().strip() in report
    bad = run_config(teacher_dir, tmp_path / "bad", evaluate={"benchmarks": {"humaneval": {"output": "x"}}})
    with pytest.raises(ConfigError, match="benchmarks.humaneval: field 'output' is set by the pipeline"):
        load_run(write_yaml(tmp_path, bad))


def test_task_accuracy_retained_against_hand_numbers():
    from minitron_hf.eval.base import accuracy_retained
    from minitron_hf.pipeline import task_accuracy

    assert accuracy_retained(0.55, 0.75, 0.25) == pytest.approx(0.6) and accuracy_retained(0.3, 0.25, 0.25) is None
    res = {"teacher": {"pydoc_continuation": 0.75, "mini_mc": 0.9}, "pruned": {"pydoc_continuation": 0.35},
           "distilled": {"pydoc_continuation": 0.55}}
    acc = task_accuracy(res, "teacher")
    assert set(acc) == {"pydoc_continuation"}  # no known chance level for mini_mc
    row = acc["pydoc_continuation"]
    assert row["retained"] == pytest.approx((0.55 - 0.25) / (0.75 - 0.25)) and row["retained_by"] == "distilled"
    assert row["pruned"] == 0.35 and row["chance"] == 0.25


def test_demo_summary_shows_task_accuracy_and_in_domain_answers(teacher_dir, tmp_path, capsys):
    """Issue 21: the terminal summary and the report show accuracy retained on a real task, every model's
    continuation of in-domain prompts, and the chat question labelled as out of the domain."""
    pytest.importorskip("lm_eval")
    out = tmp_path / "run"
    prompts = ["def add(a, b):\n", "The with statement is used to"]
    cfg = run_config(teacher_dir, out, export=None, distill={"max_steps": 1},
                     evaluate={"max_new_tokens": 3, "domain_prompts": prompts,
                               "benchmarks": {"base": {"tasks": ["pydoc_continuation"], "num_fewshot": 0, "limit": 4}}})
    assert main(["run", str(write_yaml(tmp_path, cfg))]) == 0
    printed = capsys.readouterr().out
    ev = json.loads((out / "evaluate" / "evaluation.json").read_text())
    res = ev["benchmarks"]["base"]["results"]
    row = ev["task_accuracy"]["pydoc_continuation"]
    t, d = res["teacher"]["pydoc_continuation"], res["distilled"]["pydoc_continuation"]
    want = None if abs(t - 0.25) < 1e-9 else (d - 0.25) / (t - 0.25)
    assert row["retained"] == (pytest.approx(want) if want is not None else None)
    assert all(len(r["domain_answers"]) == 2 for r in ev["models"].values())
    assert "accuracy retained" in printed and "| pydoc_continuation | 0.25 |" in printed
    assert "in the distillation domain, prompt 2" in printed and "[distilled]" in printed
    assert "out of the domain, a chat question" in printed
    report = (out / "report.md").read_text()
    assert "accuracy retained" in report and "In the distillation domain" in report
    assert "Out of the domain: greedy chat answers" in report and "def add(a, b):" in report


def test_importance_stage_keys_on_the_scoring_options():
    """The importance stage's cache key comes from the prune options marked as scoring ones: changing one of them
    re-runs the calibration, changing the width target or an output option reuses it."""
    from minitron_hf.pipeline.importance import STAGE
    from minitron_hf.pruning.config import PruneConfig

    assert set(PruneConfig.scoring_fields()) == {
        "importance", "calib_samples", "seq_len", "batch_size", "depth_metric", "val_samples", "dtype", "device",
        "depth_task_fewshot", "depth_task_limit", "depth_task_score", "depth_noncontiguous", "tasks_dir"}

    class R:
        def __init__(self, **prune):
            self.sections = {"prune": {"target": {"hidden_size": 432}, **prune}}

    base = STAGE.key(R())
    assert STAGE.key(R(calib_samples=8)) != base and STAGE.key(R(dtype="bfloat16")) != base
    assert STAGE.key(R(merge_pruned_heads=True)) == base
    assert STAGE.key(R(max_shard_size_mb=10, overwrite=True, iterative_steps=1)) == base
    wider = R()
    wider.sections["prune"]["target"] = {"hidden_size": 480}
    assert STAGE.key(wider) == base  # scores rank every channel: a new width target reuses them
