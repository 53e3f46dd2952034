"""The Stage interface of `minitron run` (minitron_hf/pipeline/): every stage states its section, inputs, process
placement and typed result in its own module, and the rest of the pipeline reads only that."""

import dataclasses

import pytest

from minitron_hf.pipeline import PipelineError, Stage, StageResult
from minitron_hf.pipeline.base import RunConfig
from minitron_hf.pipeline.config import set_override
from minitron_hf.pipeline.stages import ORDER, STAGES, Sections, stage_named, with_sections


def test_stages_in_order_read_only_earlier_stages():
    assert STAGES == ("data", "correct", "importance", "prune", "distill", "align", "evaluate", "export")
    for i, stage in enumerate(ORDER):
        assert isinstance(stage, Stage) and stage_named(stage.name) is stage
        assert set(stage.inputs) <= set(STAGES[:i]), stage.name
    assert [s.name for s in ORDER if s.parallel] == ["correct", "importance", "prune", "distill", "align"]
    with pytest.raises(PipelineError, match="'distil' is not a stage; stages: data, correct"):
        stage_named("distil")


def test_sections_come_from_the_stages():
    """The YAML's section keys are exactly the stages that take one; `--set SECTION.KEY=V` accepts those only."""
    names = [s.name for s in with_sections()]
    assert names == ["correct", "prune", "distill", "align", "evaluate", "export"]
    assert [f.name for f in dataclasses.fields(Sections)] == names
    assert not {f.name for f in dataclasses.fields(RunConfig)} & set(STAGES)
    for s in with_sections():
        assert s.section, s.name  # config classes to check the section against
    values = {}
    set_override(values, "export.formats=[hf, fp8]")
    assert values == {"export": {"formats": ["hf", "fp8"]}}
    with pytest.raises(PipelineError, match="section among correct, prune, distill, align, evaluate, export"):
        set_override(values, "importance.calib_samples=4")


def test_reserved_fields_are_refused_per_stage():
    with pytest.raises(Exception, match="field 'teacher' is set by the pipeline"):
        stage_named("distill").check_section({"teacher": "x"}, "cfg.yaml")
    with pytest.raises(Exception, match="unknown field 'max_step'; did you mean 'max_steps'"):
        stage_named("distill").check_section({"max_step": 3}, "cfg.yaml")
    stage_named("distill").check_section({"max_steps": 3}, "cfg.yaml")


def test_results_are_typed_and_round_trip():
    """Each stage's result class is what its done.json holds: unset fields are left out, a record from a newer
    version (an unknown key) still reads, and a reader gets attributes, not dict paths."""
    for stage in ORDER:
        cls = stage.result
        assert issubclass(cls, StageResult) and dataclasses.is_dataclass(cls)
        empty = cls()
        assert cls.from_dict(empty.to_dict()) == empty
        assert cls.from_dict({**empty.to_dict(), "added_by_a_newer_version": 1}) == empty
    imp = stage_named("importance").result(tokens=10, scores="s", drop_layers=[3, 4], depth_metric="lm_loss")
    d = imp.to_dict()
    assert d == {"tokens": 10, "scores": "s", "drop_layers": [3, 4], "depth_metric": "lm_loss"}
    back = stage_named("importance").result.from_dict(d)
    assert back.drop_layers == [3, 4] and back.task_evaluations is None
