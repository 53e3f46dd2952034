"""What every stage of ``minitron run`` shares: the run config, the :class:`Stage` interface, typed results and the
done records they are kept in.

A stage is one object (one module under ``minitron_hf/pipeline/``) that says everything the pipeline needs to know
about it: its YAML section's config classes and the fields the pipeline wires in itself, the stages whose outputs it
reads, whether it runs on every process of ``accelerate launch``, how it checks its options before any work, what
its result depends on (the cache key), how it runs, and its section of the report. Adding a stage means writing one
such module and adding it to :data:`~minitron_hf.pipeline.stages.ORDER`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from ..checkpoints import latest_complete_checkpoint
from ..config import check_fields, instantiate
from ..data import DataConfig
from ..errors import MinitronError

logger = logging.getLogger(__name__)


class PipelineError(MinitronError):
    """A run config or stage selection that cannot be used."""


@dataclass
class RunConfig:
    """Top-level keys of a ``minitron run`` config (data keys come from DataConfig; each stage's section comes from
    its :class:`Stage`)."""

    output_dir: str | None = field(default=None, metadata={"help": "where every stage writes its subdirectory"})
    teacher: str = field(default="smollm2-135m", metadata={"help": "the model to compress: alias, local dir or Hub id"})
    seq_len: int = field(default=256, metadata={"help": "tokens per sequence, for every stage unless a section "
                         "sets its own"})
    eval_samples: int = field(default=16, metadata={"help": "validation sequences for evaluation (all stages)"})
    report_to: str = field(default="tensorboard", metadata={"help": "trainer logging: tensorboard, wandb, trackio, "
                           "none, or a comma-separated list (a section's own report_to wins)"})
    ddp_timeout: int = field(default=1800, metadata={"help": "under `accelerate launch`: seconds a collective waits "
                             "for the other processes before the run fails (a hung rank); set once for all stages"})

    def __post_init__(self):
        if not self.output_dir:
            raise PipelineError("output_dir is required (the directory every stage writes into)")
        if self.seq_len < 2 or self.eval_samples < 1:
            raise PipelineError(f"seq_len must be >= 2 and eval_samples >= 1 (got {self.seq_len}, {self.eval_samples})")


@dataclass
class Run:
    """A checked run config: the top level, the data and one plain dict of options per stage section, with the
    pipeline's stages in order (:data:`~minitron_hf.pipeline.stages.ORDER`, given by ``load_run``). A stage asks the
    run about the others (:meth:`enabled`, :func:`read_result`), so that no stage module imports the list of
    stages, which imports every stage module."""

    cfg: RunConfig
    data: DataConfig
    sections: dict[str, dict | None]
    stages: tuple[Stage, ...] = field(repr=False)
    path: str | None = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise PipelineError(f"{name!r} is not a stage; stages: {', '.join(s.name for s in self.stages)}")

    def enabled(self, stage: str) -> bool:
        return self.stage(stage).enabled(self)

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage


# --------------------------------------------------------------------------------------------------
# Results and done records
# --------------------------------------------------------------------------------------------------

@dataclass
class StageResult:
    """What a finished stage hands to the stages after it and to the report; kept as ``result`` in its done.json.

    Each stage subclasses it with its own typed fields, so a reader writes ``result.drop_layers``, not a dict path.
    Unset (None) fields are left out of the record; a record with fields this version does not know (written by a
    newer one) is read without them."""

    tokens: int | None = field(default=None, metadata={"help": "tokens the stage processed (the report's table)"})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def read_done(run: Run, stage: str) -> dict | None:
    """The stage's done.json, or None when it has not finished. A damaged one (a crash or a full disk while it was
    written by an older version, an edit) counts as not finished: the stage runs again, and the log says why."""
    f = run.stage_dir(stage) / "done.json"
    if not f.exists():
        return None
    try:
        done = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        logger.warning("%s is damaged (%s): stage %s will run again", f, e, stage)
        return None
    if not isinstance(done, dict) or not {"config", "result", "finished_at"} <= done.keys() or \
            not isinstance(done["result"], dict):
        logger.warning("%s is not a stage record: stage %s will run again", f, stage)
        return None
    return done


def read_result(run: Run, stage: str):
    """The typed result of a finished stage (its :attr:`Stage.result` class), or None when it has not finished."""
    done = read_done(run, stage)
    return None if done is None else run.stage(stage).result.from_dict(done["result"])


def fingerprint(done: dict) -> str:
    return hashlib.sha256(json.dumps([done["config"], done["finished_at"]], sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# The stage interface
# --------------------------------------------------------------------------------------------------

class Stage:
    """One stage of ``minitron run``. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    # the help of its YAML section; "" = the stage has no section of its own (data reads the top-level keys,
    # importance the prune section)
    help: ClassVar[str] = ""
    # the config classes of its YAML section
    section: ClassVar[tuple] = ()
    # section fields the pipeline sets itself (models, output directories): refused in the YAML
    reserved: ClassVar[tuple[str, ...]] = ()
    # stages whose outputs it reads: their fingerprints are part of its cache key, and `--only` needs them done
    inputs: ClassVar[tuple[str, ...]] = ()
    # spread over the processes of `accelerate launch` (trainers, calibration); False = main process only
    parallel: ClassVar[bool] = False
    # runs in every run, section or not
    always: ClassVar[bool] = False
    result: ClassVar[type[StageResult]] = StageResult

    def enabled(self, run: Run) -> bool:
        return self.always or run.sections.get(self.name) is not None

    def check_section(self, sec: dict, where: str) -> None:
        """Every key of the section is an option of the stage, and none is one the pipeline sets."""
        check_fields(sec, self.section, f"{where}: section {self.name!r}", reserved=self.reserved)

    def options(self, run: Run):
        """The option objects the stage runs with: its section plus what the pipeline wires in."""
        return instantiate(list(self.section), dict(run.sections.get(self.name) or {}),
                           where=f"section {self.name!r}")

    def check(self, run: Run, where: str, check_model: bool = True) -> None:
        """Fail now on anything that would fail hours in (called for enabled stages by ``load_run``)."""
        self.options(run)

    def key(self, run: Run):
        """The stage's own part of its cache key (what its result depends on besides the data and its inputs)."""
        return run.sections.get(self.name)

    def run(self, run: Run, resume: bool) -> StageResult:
        raise NotImplementedError

    def report(self, run: Run, result: StageResult | None) -> list[str]:
        """Markdown lines of the stage's section of report.md; called for every stage, configured or not, with
        ``result`` None until it has finished."""
        return []


# --------------------------------------------------------------------------------------------------
# Helpers several stages use
# --------------------------------------------------------------------------------------------------

def report_to(run: Run, section: dict) -> list[str]:
    r = section.get("report_to", run.cfg.report_to)
    items = [x.strip() for x in (r.split(",") if isinstance(r, str) else r) if x and x.strip()]
    return [] if items in (["none"], []) else items


def check_report_to(run: Run, stage: str, where: str) -> None:
    """A trainer stage's logging integrations are installed."""
    for integration in report_to(run, run.sections.get(stage) or {}):
        module = {"wandb": "wandb", "trackio": "trackio", "tensorboard": "tensorboard"}.get(integration)
        if module and importlib.util.find_spec(module) is None:
            raise PipelineError(f"{where}: report_to={integration!r} in section {stage!r} needs the package "
                                f"{module!r}: pip install {module} (or report_to: none)")


def resume_from(output_dir: str, resume: bool) -> bool | None:
    """Resume a trainer stage only from a complete checkpoint it wrote: one interrupted before its first complete
    save starts over (its partial checkpoint folders are removed, as the stage runs with overwrite=True)."""
    return True if resume and latest_complete_checkpoint(output_dir) is not None else None


def prepared_data(run: Run) -> DataConfig:
    """The run's data as the stages read it: the data stage's prepared folder(s), same split and epoch options."""
    done = read_result(run, "data")
    if done is None or run.data.streaming:  # --only STAGE checks the data stage ran; a library caller may not have run it
        return run.data
    return replace(run.data, data=done.config)


def teacher_dir(run: Run) -> str:
    """The teacher the later stages read: the corrected one when a correct stage is configured."""
    return str(run.stage_dir("correct") / "final") if run.enabled("correct") else run.cfg.teacher


def distilled_student(run: Run) -> Path:
    return run.stage_dir("distill") / "final" if run.enabled("distill") else run.stage_dir("prune") / "model"


def final_student(run: Run) -> Path:
    """The model the run produces: the aligned one when an align stage ran, else the distilled (or pruned) one."""
    if run.enabled("align"):
        done = read_result(run, "align")
        if done is not None and done.model:
            return Path(done.model)
    return distilled_student(run)


def rel(run: Run, p: Path) -> str:
    """``p`` relative to the run folder (links in report.md), or as given when it lies elsewhere."""
    try:
        return str(Path(p).resolve().relative_to(run.out.resolve()))
    except ValueError:
        return str(p)


def config_dump(run: Run) -> dict:
    """The run's top-level and data keys (run_config.yaml)."""
    d = {k: v for k, v in asdict(run.cfg).items() if v is not None}
    d.update({k: v for k, v in run.sections.items() if v})  # the sections as given (an absent one is left out)
    d.update({k: v for k, v in asdict(run.data).items()})
    return json.loads(json.dumps(d, default=str))
