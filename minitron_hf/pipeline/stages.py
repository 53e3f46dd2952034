"""The stages of ``minitron run``, in the order they run: the one list a new stage is added to."""

from __future__ import annotations

from dataclasses import field, make_dataclass

from . import align, correct, data, distill, evaluate, export, importance, prune
from .base import PipelineError, Stage

ORDER: tuple[Stage, ...] = (data.STAGE, correct.STAGE, importance.STAGE, prune.STAGE, distill.STAGE, align.STAGE,
                            evaluate.STAGE, export.STAGE)
STAGES: tuple[str, ...] = tuple(s.name for s in ORDER)
_BY_NAME = {s.name: s for s in ORDER}


def stage_named(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise PipelineError(f"{name!r} is not a stage; stages: {', '.join(STAGES)}") from None


def with_sections() -> list[Stage]:
    """The stages that take a YAML section of their own (the others read the top-level keys or another's)."""
    return [s for s in ORDER if s.help]


# the YAML's section keys, one per stage that has a section: a plain mapping here, checked against the stage's own
# config classes by load_run
Sections = make_dataclass("Sections", [(s.name, dict | None, field(default=None, metadata={"help": s.help}))
                                       for s in with_sections()])
Sections.__doc__ = "One key per stage section of a ``minitron run`` config (its options, or absent)."
