"""``minitron run CONFIG.yaml``: the whole recipe, stage by stage, resumable, with a report.

Stages, in order, each in its own subdirectory of ``output_dir``:

===========  =====================================================  ============================
stage        what                                                   result
===========  =====================================================  ============================
data         the data (or blend) tokenized once into token shards   ``data/`` (``data/source-N``)
correct      teacher correction (only with a ``correct:`` section)  ``correct/final``
importance   activation importance (width) and/or the depth scan    ``importance/``
prune        trim the (corrected) teacher to ``prune.target``       ``prune/model``
distill      logit KD from the (corrected) teacher (``distill:``)   ``distill/final``
align        SFT stages + rounds of RPO (only with ``align:``)      ``align/rounds/round_N/final``
evaluate     validation loss / perplexity, teacher vs students      ``evaluate/evaluation.json``
export       the final student as a vanilla HF folder (``export:``) ``export/hf``
===========  =====================================================  ============================

Each stage writes ``config.json`` (its resolved config, including fingerprints of the stages it
reads) when it starts and ``done.json`` when it has finished. A rerun skips a stage whose
``done.json`` holds the same resolved config; a changed config, or a re-run upstream stage, runs
it again (and so everything downstream). A stage interrupted mid-way resumes: trainer stages from
their newest ``checkpoint-*``, the others by starting over (their outputs are written atomically).
``--from STAGE`` re-runs STAGE and everything after it; ``--only STAGE`` runs just that one.

``report.md`` (with PNG plots) is rewritten after every stage.

The YAML: top-level keys are :class:`RunConfig` and :class:`~minitron_hf.data.DataConfig` fields;
each stage's section takes that stage's own options (those of ``minitron correct-teacher``,
``minitron prune``, ``minitron distill``, ...), except the ones the pipeline sets itself (models,
output directories). Every key is checked before any work.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .config import check_fields, instantiate, load_yaml
from .outputs import check_output, write_json_atomically, write_text_atomically
from .data import DataConfig
from .distributed import process_state
from .errors import MinitronError

logger = logging.getLogger(__name__)

STAGES = ("data", "correct", "importance", "prune", "distill", "align", "evaluate", "export")
EXPORT_FORMATS = ("hf", "fp8")


class PipelineError(MinitronError):
    """A run config or stage selection that cannot be used."""


@dataclass
class RunConfig:
    """Top-level keys of a ``minitron run`` config (data keys come from DataConfig)."""

    output_dir: str | None = field(default=None, metadata={"help": "where every stage writes its subdirectory"})
    teacher: str = field(default="smollm2-135m", metadata={"help": "the model to compress: alias, local dir or Hub id"})
    seq_len: int = field(default=256, metadata={"help": "tokens per sequence, for every stage unless a section "
                         "sets its own"})
    eval_samples: int = field(default=16, metadata={"help": "validation sequences for evaluation (all stages)"})
    report_to: str = field(default="tensorboard", metadata={"help": "trainer logging: tensorboard, wandb, trackio, "
                           "none, or a comma-separated list (a section's own report_to wins)"})
    ddp_timeout: int = field(default=1800, metadata={"help": "under `accelerate launch`: seconds a collective waits "
                             "for the other processes before the run fails (a hung rank); set once for all stages"})
    correct: dict | None = field(default=None, metadata={"help": "teacher correction options (minitron "
                                 "correct-teacher); absent = no correction"})
    prune: dict | None = field(default=None, metadata={"help": "pruning options (minitron prune), target required"})
    distill: dict | None = field(default=None, metadata={"help": "distillation options (minitron distill); absent "
                                 "= the pruned model is the result"})
    align: dict | None = field(default=None, metadata={"help": "instruct variant (minitron align): sft stages and "
                               "RPO rounds; absent = no alignment"})
    evaluate: dict | None = field(default=None, metadata={"help": "evaluation options (samples, prompt, ...)"})
    export: dict | None = field(default=None, metadata={"help": "export options (formats); absent = no export"})


@dataclass
class EvaluateConfig:
    """Options of the evaluate stage."""

    samples: int | None = field(default=None, metadata={"help": "validation sequences (default: eval_samples)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    prompt: str = field(default="What is the capital of France?", metadata={"help": "prompt answered greedily by "
                        "every model, shown in the report"})
    max_new_tokens: int = field(default=32, metadata={"help": "length of those answers"})
    domain_prompts: list[str] | None = field(default=None, metadata={"help": "prompts from the distillation domain "
                                             "(e.g. the start of a Python function), continued greedily as raw "
                                             "text (no chat template) by every model and shown side by side: "
                                             "what the student kept where it was trained"})
    benchmarks: dict | None = field(default=None, metadata={"help": "`minitron eval` suites run on teacher and "
                                    "students, {suite: {its options}} with suite among base, humaneval, mbpp, "
                                    "mtbench, bfcl, instruct; tables in evaluate/<suite>/results.md, linked from "
                                    "the report"})


@dataclass
class ExportConfig:
    """Options of the export stage."""

    formats: list[str] = field(default_factory=lambda: ["hf"], metadata={"help": "hf: the final student as a "
                               "vanilla safetensors folder with a model card (what `minitron publish` uploads); "
                               "fp8: a ModelOpt FP8 checkpoint for TensorRT-LLM and vLLM (GPU)"})
    fp8_calib_samples: int = field(default=64, metadata={"help": "calibration sequences of the FP8 export"})


@dataclass
class AlignConfig:
    """Options of the align stage: the paper's SFT stages, then rounds of RPO (arXiv 2408.11796 sec. 3.5)."""

    sft: list[dict] = field(default_factory=lambda: [{"data": "builtin:math-code"}, {"data": "builtin:instructions"}],
                            metadata={"help": "SFT stages in order, each a mapping of `minitron align sft` options "
                                      "(data, max_steps, learning_rate, ...); [] = no SFT"})
    rounds: dict | None = field(default_factory=dict, metadata={"help": "`minitron align rounds` options (rounds, "
                                "samples, reward, beta, eta, ...); null = no RPO"})


# stages without a section of their own: importance takes prune's options; the data stage reads the top-level
# data keys (`data:` itself is the source, not a section)
_NO_SECTION = ("data", "importance")

# fields each section may not set: the pipeline wires models and directories itself
_RESERVED = {
    "correct": ("model", "output_dir", "overwrite", "resume_from_checkpoint"),
    "prune": ("model", "output", "scores", "overwrite"),
    "distill": ("student", "teacher", "output_dir", "overwrite", "resume_from_checkpoint"),
    "align": (),
    "evaluate": (),
    "export": (),
}


def _section_classes(stage: str):
    if stage == "correct":
        from .distill.correct import CorrectionConfig
        from .distill.trainer import TrainArgs

        return [CorrectionConfig, TrainArgs]
    if stage in ("importance", "prune"):
        from .pruning.prune import PruneConfig

        return [PruneConfig]
    if stage == "distill":
        from .distill.run import DistillScriptConfig
        from .distill.trainer import DistillationConfig

        return [DistillScriptConfig, DistillationConfig]
    if stage == "evaluate":
        return [EvaluateConfig]
    if stage == "align":
        return [AlignConfig]
    return [ExportConfig]


_ALIGN_RESERVED = ("model", "output_dir", "overwrite")


def _align_objects(run: Run):
    """[(SFTStageConfig, SFTArgs) per SFT stage], (RoundsConfig, RPOConfig) or None."""
    from .alignment.rounds import RoundsConfig
    from .alignment.rpo import RPOConfig
    from .alignment.sft import SFTArgs, SFTStageConfig

    al = instantiate([AlignConfig], dict(run.sections["align"]), where="section 'align'")[0]
    d = run.stage_dir("align")
    model = str(_distilled_student(run))
    sfts = []
    for i, sec in enumerate(al.sft or [], 1):
        if not isinstance(sec, dict):
            raise PipelineError(f"section 'align': sft[{i - 1}] must be a mapping of `minitron align sft` options")
        check_fields(sec, [SFTStageConfig, SFTArgs], f"section 'align': sft[{i - 1}]", reserved=_ALIGN_RESERVED)
        sec = {"report_to": "none", **sec, "model": model, "output_dir": str(d / f"sft_{i}"), "overwrite": True}
        sfts.append(instantiate([SFTStageConfig, SFTArgs], sec, where=f"section 'align': sft[{i - 1}]"))
        model = sec["output_dir"] + "/final"
    rounds = None
    if al.rounds is not None:
        if not isinstance(al.rounds, dict):
            raise PipelineError("section 'align': rounds must be a mapping of `minitron align rounds` options")
        check_fields(al.rounds, [RoundsConfig, RPOConfig], "section 'align': rounds", reserved=_ALIGN_RESERVED)
        sec = {"report_to": "none", "save_strategy": "no", **al.rounds, "model": model,
               "output_dir": str(d / "rounds")}
        rounds = instantiate([RoundsConfig, RPOConfig], sec, where="section 'align': rounds")
    return sfts, rounds


# --------------------------------------------------------------------------------------------------
# Loading and checking a run config (everything before any heavy work)
# --------------------------------------------------------------------------------------------------

def _set_override(values: dict, item: str) -> None:
    """``distill.max_steps=10`` or ``seq_len=128`` (value parsed as YAML) into the config mapping."""
    if "=" not in item:
        raise PipelineError(f"--set {item!r} must be KEY=VALUE or SECTION.KEY=VALUE")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) > 2 or (len(parts) == 2 and (parts[0] not in STAGES or parts[0] in _NO_SECTION)):
        raise PipelineError(f"--set {item!r}: expected KEY=VALUE or SECTION.KEY=VALUE with a section among "
                            f"{', '.join(s for s in STAGES if s not in _NO_SECTION)}")
    # YAML 1.2 booleans only: `save_strategy=no` means the string "no", not False
    try:
        value = raw.strip() if raw.strip().lower() in ("yes", "no", "on", "off", "y", "n") else yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise PipelineError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if len(parts) == 2:
        if not isinstance(values.get(parts[0]), dict):
            values[parts[0]] = {}
        values[parts[0]][parts[1]] = value
    else:
        values[parts[0]] = value


@dataclass
class Run:
    """A checked run config: the top level, the data and one plain dict of options per stage."""

    cfg: RunConfig
    data: DataConfig
    sections: dict[str, dict | None]
    path: str | None = None

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)

    def enabled(self, stage: str) -> bool:
        if stage in ("data", "importance", "prune", "evaluate"):
            return True
        return self.sections.get(stage) is not None

    def stage_dir(self, stage: str) -> Path:
        return self.out / stage


def load_run(path: str | Path | None = None, overrides=(), values: dict | None = None, check_model: bool = True) -> Run:
    """Read and check a run config (YAML file and/or a mapping, then ``--set`` overrides).

    ``check_model=False`` skips the checks that need the teacher's config (resolving it may download it)."""
    data = load_yaml(path, [RunConfig, DataConfig]) if path is not None else {}
    data = copy.deepcopy({**data, **(values or {})})
    for item in overrides or ():
        _set_override(data, item)
    where = str(path) if path else "run config"
    check_fields(data, [RunConfig, DataConfig], where)
    for stage in STAGES:
        if stage not in _NO_SECTION and data.get(stage) is not None and not isinstance(data[stage], dict):
            raise PipelineError(f"{where}: section {stage!r} must be a mapping of options (or absent)")
    cfg, data_cfg = instantiate([RunConfig, DataConfig], data, where=where)
    if not cfg.output_dir:
        raise PipelineError(f"{where}: output_dir is required (the directory every stage writes into)")
    if cfg.seq_len < 2 or cfg.eval_samples < 1:
        raise PipelineError(f"{where}: seq_len must be >= 2 and eval_samples >= 1 (got {cfg.seq_len}, {cfg.eval_samples})")
    sections = {}
    for stage in STAGES:
        if stage in _NO_SECTION:
            continue
        sec = getattr(cfg, stage)
        if sec is not None and not isinstance(sec, dict):
            raise PipelineError(f"{where}: section {stage!r} must be a mapping of options (or absent)")
        if sec is not None:
            check_fields(sec, _section_classes(stage), f"{where}: section {stage!r}", reserved=_RESERVED[stage])
        sections[stage] = None if sec is None else dict(sec)
    if not sections.get("prune") or not sections["prune"].get("target"):
        raise PipelineError(f"{where}: section 'prune' with a 'target' is required, e.g. prune: {{target: "
                            f"{{hidden_size: 432, intermediate_size: 768}}}}")
    if sections["evaluate"] is None:
        sections["evaluate"] = {}
    run = Run(cfg, data_cfg, sections, str(path) if path else None)
    _check_stages(run, where, check_model)
    return run


def _report_to(run: Run, section: dict) -> list[str]:
    r = section.get("report_to", run.cfg.report_to)
    items = [x.strip() for x in (r.split(",") if isinstance(r, str) else r) if x and x.strip()]
    return [] if items in (["none"], []) else items


def _check_stages(run: Run, where: str, check_model: bool = True) -> None:
    """Build every stage's option objects once, so that bad values fail now, not hours in."""
    from .pruning.prune import validate

    for stage in ("correct", "distill"):
        sec = run.sections.get(stage)
        if sec is None:
            continue
        for integration in _report_to(run, sec):
            module = {"wandb": "wandb", "trackio": "trackio", "tensorboard": "tensorboard"}.get(integration)
            if module and importlib.util.find_spec(module) is None:
                raise PipelineError(f"{where}: report_to={integration!r} in section {stage!r} needs the package "
                                    f"{module!r}: pip install {module} (or report_to: none)")
        _stage_objects(run, stage)
    if run.sections.get("align") is not None:
        from .alignment.rounds import check_config

        _, rounds = _stage_objects(run, "align")
        if rounds is not None:
            check_config(*rounds)
    prune = _stage_objects(run, "prune")
    prune.model = run.cfg.teacher  # a corrected teacher keeps the source's architecture
    if check_model:
        validate(prune)
    ev = _stage_objects(run, "evaluate")
    if (ev.samples is not None and ev.samples < 1) or ev.batch_size < 1 or ev.max_new_tokens < 0:
        raise PipelineError(f"{where}: section 'evaluate': samples and batch_size must be >= 1, max_new_tokens >= 0")
    _benchmark_configs(run, ev, where)
    if run.sections.get("export") is not None:
        ex = _stage_objects(run, "export")
        bad = [f for f in ex.formats if f not in EXPORT_FORMATS]
        if bad or not ex.formats:
            raise PipelineError(f"{where}: section 'export': formats={ex.formats!r}; allowed: {', '.join(EXPORT_FORMATS)}")
        if ex.fp8_calib_samples < 1:
            raise PipelineError(f"{where}: section 'export': fp8_calib_samples={ex.fp8_calib_samples} must be >= 1")


def _benchmark_configs(run: Run, ev: "EvaluateConfig", where: str = "run config") -> dict:
    """{suite: its config object} of ``evaluate.benchmarks``, each checked like `minitron eval <suite>`'s options."""
    from .eval import SUITES, suite_parts

    out = {}
    if ev.benchmarks is None:
        return out
    if not isinstance(ev.benchmarks, dict):
        raise PipelineError(f"{where}: section 'evaluate': benchmarks must map suites to options, e.g. "
                            f"{{base: {{tasks: [pydoc_continuation], limit: 30}}}}")
    for suite, opts in ev.benchmarks.items():
        if suite not in SUITES:
            raise PipelineError(f"{where}: section 'evaluate': benchmarks: unknown suite {suite!r}; allowed: "
                                f"{', '.join(SUITES)}")
        cls = suite_parts(suite)[0]
        opts = dict(opts or {})
        check_fields(opts, [cls], f"{where}: section 'evaluate': benchmarks.{suite}", reserved=("output",))
        out[suite] = instantiate([cls], {**opts, "output": str(run.stage_dir("evaluate") / suite)},
                                 where=f"{where}: section 'evaluate': benchmarks.{suite}")[0]
    return out


def _teacher_dir(run: Run) -> str:
    return str(run.stage_dir("correct") / "final") if run.enabled("correct") else run.cfg.teacher


def _stage_objects(run: Run, stage: str):
    """The option objects a stage runs with: the section plus what the pipeline wires in."""
    sec = dict(run.sections.get(stage) or {})
    d = run.stage_dir(stage)
    if stage == "correct":
        from .distill.correct import CorrectionConfig
        from .distill.trainer import TrainArgs

        sec.setdefault("seq_len", run.cfg.seq_len)
        sec.setdefault("eval_samples", run.cfg.eval_samples)
        sec.setdefault("report_to", _report_to(run, sec) or "none")
        sec.update(model=run.cfg.teacher, output_dir=str(d), overwrite=True)
        return instantiate([CorrectionConfig, TrainArgs], sec, where="section 'correct'")
    if stage in ("importance", "prune"):
        from .pruning.prune import PruneConfig

        sec = dict(run.sections["prune"])
        sec.setdefault("seq_len", run.cfg.seq_len)
        sec.update(model=_teacher_dir(run), output=str(run.stage_dir("prune") / "model"), overwrite=True)
        return instantiate([PruneConfig], sec, where="section 'prune'")[0]
    if stage == "distill":
        from .distill.run import DistillScriptConfig
        from .distill.trainer import DistillationConfig

        sec.setdefault("seq_len", run.cfg.seq_len)
        sec.setdefault("eval_samples", run.cfg.eval_samples)
        sec.setdefault("report_to", _report_to(run, sec) or "none")
        sec.update(student=str(run.stage_dir("prune") / "model"), teacher=_teacher_dir(run), output_dir=str(d),
                   overwrite=True)
        return instantiate([DistillScriptConfig, DistillationConfig], sec, where="section 'distill'")
    if stage == "evaluate":
        return instantiate([EvaluateConfig], sec, where="section 'evaluate'")[0]
    if stage == "align":
        return _align_objects(run)
    return instantiate([ExportConfig], sec, where="section 'export'")[0]


# --------------------------------------------------------------------------------------------------
# Stage bookkeeping: resolved configs, fingerprints, done markers
# --------------------------------------------------------------------------------------------------

_INPUTS = {
    "data": (),
    "correct": ("data",),
    "importance": ("data", "correct"),
    "prune": ("data", "correct", "importance"),
    "distill": ("data", "correct", "prune"),
    "align": ("prune", "distill"),
    "evaluate": ("data", "correct", "prune", "distill", "align"),
    "export": ("prune", "distill", "align", "evaluate"),
}


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
    if not isinstance(done, dict) or not {"config", "result", "finished_at"} <= done.keys():
        logger.warning("%s is not a stage record: stage %s will run again", f, stage)
        return None
    return done


def _fingerprint(done: dict) -> str:
    return hashlib.sha256(json.dumps([done["config"], done["finished_at"]], sort_keys=True).encode()).hexdigest()[:16]


def _importance_options(run: Run) -> dict:
    """What the importance stage depends on: the prune options marked as scoring ones
    (:meth:`~minitron_hf.pruning.prune.PruneConfig.scoring_fields`) and which kinds of scores the target needs."""
    from .pruning.prune import PruneConfig

    sec = run.sections["prune"]
    target = {k: v for k, v in sec["target"].items() if v is not None}
    width = any(k in target for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                      "num_key_value_heads")) and sec.get("importance", "l2_mean") != "random"
    depth = None if "drop_layers" in target else target.get("num_hidden_layers")
    return {**{k: sec[k] for k in PruneConfig.scoring_fields() if k in sec}, "width_scores": width,
            "depth_to_layers": depth}


def resolved_config(run: Run, stage: str) -> dict:
    """What a stage's result depends on: its options, the data, and the fingerprints of its inputs."""
    sec = _importance_options(run) if stage == "importance" else run.sections.get(stage)
    if stage == "data":  # the content of the sources: a changed local file prepares again
        from .data.sources import source_fingerprint

        sec = {"sources": [source_fingerprint(c) for c, _ in run.data.sources()], "tokenizer": run.cfg.teacher}
    inputs = {}
    for up in _INPUTS[stage]:
        if run.enabled(up):
            done = read_done(run, up)
            inputs[up] = _fingerprint(done) if done else None
    return json.loads(json.dumps({
        "stage": stage, "options": sec, "data": asdict(run.data), "teacher": run.cfg.teacher,
        "seq_len": run.cfg.seq_len, "eval_samples": run.cfg.eval_samples, "inputs": inputs,
    }, default=str))


_write_json_atomically = write_json_atomically


# --------------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------------

def _resume_from(output_dir: str, resume: bool) -> bool | None:
    """Resume a trainer stage only from a complete checkpoint it wrote: one interrupted before its first complete
    save starts over (its partial checkpoint folders are removed, as the stage runs with overwrite=True)."""
    from .checkpoints import latest_complete_checkpoint

    return True if resume and latest_complete_checkpoint(output_dir) is not None else None


def _stage_data(run: Run, resume: bool) -> dict:
    """Every source tokenized once with the teacher's tokenizer (students share it), before any model loads: a
    prepared folder is checked and used where it is; anything else is prepared into the shared cache
    (``$MINITRON_CACHE/data``, keyed by content, split rule and tokenizer: later runs reuse it). An interrupted
    preparation resumes at its first unfinished chunk."""
    from .data import open_sources
    from .loading import load_tokenizer

    from .data import eval_config

    # streaming: only the bounded validation/calibration part is prepared; the train split streams in each stage
    sources = open_sources(eval_config(run.data), load_tokenizer(run.cfg.teacher))
    folders = [str(p.path) for p, _ in sources]
    config = folders[0] if isinstance(run.data.data, str) else [{"data": f, "weight": w}
                                                                 for f, (_, w) in zip(folders, sources)]
    splits = [{s: v["tokens"] for s, v in p.manifest["splits"].items()} for p, _ in sources]
    return {"tokens": sum(sum(x.values()) for x in splits), "config": config, "folders": folders, "splits": splits}


def prepared_data(run: Run) -> DataConfig:
    """The run's data as the stages read it: the data stage's prepared folder(s), same split and epoch options."""
    from dataclasses import replace

    done = read_done(run, "data")
    if done is None or run.data.streaming:  # --only STAGE checks the data stage ran; a library caller may not have run it
        return run.data
    return replace(run.data, data=done["result"]["config"])


def _stage_correct(run: Run, resume: bool) -> dict:
    from .distill.correct import run_correction

    cfg, args = _stage_objects(run, "correct")
    args.resume_from_checkpoint = _resume_from(args.output_dir, resume)
    s = run_correction(prepared_data(run), cfg, args)
    return {"tokens": s.get("tokens"), "summary": s, "model": str(run.stage_dir("correct") / "final")}


def _importance_plan(run: Run):
    """(PruneConfig, source dir, width scores needed?, depth block size)."""
    from transformers import AutoConfig

    from .loading import resolve_model
    from .pruning.trim import PruneTarget, resolve_target

    cfg = _stage_objects(run, "prune")
    src = resolve_model(cfg.model)
    config = AutoConfig.from_pretrained(src)
    target = PruneTarget.from_dict(cfg.target)
    new_config, drop = resolve_target(config, target)
    width = bool(target.width_fields()) and cfg.importance != "random"
    k = config.num_hidden_layers - new_config["num_hidden_layers"] if drop is None else 0
    return cfg, src, width, max(k, 0)


def _stage_importance(run: Run, resume: bool) -> dict:
    from .loading import load_tokenizer
    from .outputs import write_checkpoint_atomically
    from .pruning.importance import plot_importance
    from .pruning.prune import compute_scores

    cfg, src, width, k = _importance_plan(run)
    out = run.stage_dir("importance") / "scores"
    if not width and not k:
        return {"tokens": 0, "note": "nothing to score (random importance or explicit drop_layers)"}
    imp, li, _ = compute_scores(prepared_data(run), cfg, src, load_tokenizer(src), width, k)
    res = {"tokens": (cfg.calib_samples * cfg.seq_len if width else 0), "scores": str(out)}
    if li is not None:
        res["drop_layers"] = li.best_block(cfg.depth_metric)
        res["depth_metric"] = cfg.depth_metric
        if li.task:  # lm-eval runs: the scan's cost is counted in evaluations, not in our tokens
            res["task_evaluations"] = 1 + len(li.task_accuracy) + len(li.single_layer_accuracy) + bool(li.noncontiguous)
        else:
            n_blocks = len(li.lm_loss or li.block_influence)
            res["tokens"] += cfg.val_samples * cfg.seq_len * (n_blocks + 1)
    if not process_state().is_main_process:
        return res

    def write(tmp: Path) -> None:
        if imp is not None:
            imp.save(tmp)
            plot_importance(imp, tmp / "importance.png", title=f"{run.cfg.teacher} ({cfg.importance})")
        if li is not None:
            li.save(tmp)

    write_checkpoint_atomically(out, write)
    return res


def _stage_prune(run: Run, resume: bool) -> dict:
    from .pruning.prune import run_prune

    cfg = _stage_objects(run, "prune")
    imp = read_done(run, "importance") or {}
    result = imp.get("result", {})
    if result.get("scores") and (Path(result["scores"]) / "importance.safetensors").exists():
        cfg.scores = result["scores"]
    if result.get("drop_layers") is not None:
        cfg.target = {**cfg.target, "drop_layers": ",".join(map(str, result["drop_layers"]))}
        cfg.target.pop("num_hidden_layers", None)
    rec = run_prune(prepared_data(run), cfg)
    return {"tokens": 0, "model": cfg.output, "parameters": rec["parameters"]}


def _stage_distill(run: Run, resume: bool) -> dict:
    from .distill.run import run_distill

    script, args = _stage_objects(run, "distill")
    args.resume_from_checkpoint = _resume_from(args.output_dir, resume)
    s = run_distill(prepared_data(run), script, args)
    return {"tokens": s["tokens"], "model": s["final_model"], "summary": s}


def _stage_align(run: Run, resume: bool) -> dict:
    from .alignment.rounds import run_rounds
    from .alignment.sft import run_sft

    sfts, rounds = _stage_objects(run, "align")
    res = {"tokens": None, "sft": [], "model": str(_distilled_student(run))}
    for cfg, args in sfts:
        done = Path(args.output_dir) / "sft.json"
        rec = json.loads(done.read_text()) if resume and done.exists() else run_sft(cfg, args)
        res["sft"].append(rec)
        res["model"] = rec["final"]
    if rounds is not None:
        rec = run_rounds(*rounds)
        res["rounds"] = {k: rec[k] for k in ("config", "rpo", "train_prompts", "heldout_prompts", "rounds")}
        res["model"] = rec["rounds"][-1]["policy"]
    return res


def _stage_evaluate(run: Run, resume: bool) -> dict:
    import math

    from transformers import AutoConfig

    from .arch import count_parameters
    from .generation import generate_answer
    from .loading import load_model, load_tokenizer, resolve_model
    from .pruning.depth import lm_loss
    from .data import load_blocks

    ev = _stage_objects(run, "evaluate")
    samples = ev.samples or run.cfg.eval_samples
    models = {"teacher": run.cfg.teacher}
    if run.enabled("correct"):
        models["teacher (corrected)"] = str(run.stage_dir("correct") / "final")
    models["pruned"] = str(run.stage_dir("prune") / "model")
    if run.enabled("distill"):
        models["distilled"] = str(run.stage_dir("distill") / "final")
    if run.enabled("align"):
        models["aligned"] = (read_done(run, "align") or {}).get("result", {}).get("model")
    tok = load_tokenizer(resolve_model(run.cfg.teacher))
    blocks = load_blocks(prepared_data(run), tok, "validation", run.cfg.seq_len, samples)
    rows = {}
    for name, path in models.items():
        d = resolve_model(path)
        model = load_model(d)
        loss = lm_loss(model, blocks, ev.batch_size, progress=False)
        rows[name] = {"path": str(path), "val_loss": loss, "perplexity": math.exp(min(loss, 50)),
                      **{f"params_{k}": v for k, v in count_parameters(AutoConfig.from_pretrained(d)).items()}}
        if ev.max_new_tokens:
            tok_m = load_tokenizer(d)
            rows[name]["answer"] = generate_answer(model, tok_m, ev.prompt, ev.max_new_tokens)
            if ev.domain_prompts:
                rows[name]["domain_answers"] = [generate_answer(model, tok_m, p, ev.max_new_tokens, chat=False)
                                                for p in ev.domain_prompts]
        logger.info("evaluate: %s val loss %.3f", name, loss)
        del model
    res = {"validation": {"samples": samples, "seq_len": run.cfg.seq_len, "tokens": samples * run.cfg.seq_len},
           "prompt": ev.prompt, "domain_prompts": ev.domain_prompts or [], "models": rows,
           "tokens": samples * run.cfg.seq_len * len(models)}
    ref = "teacher (corrected)" if "teacher (corrected)" in rows else "teacher"
    if "distilled" in rows:
        res["gap_recovered"] = gap_recovered(rows["pruned"]["val_loss"], rows["distilled"]["val_loss"],
                                             rows[ref]["val_loss"])
        res["gap_reference"] = ref
    suites = _benchmark_configs(run, ev)
    if suites:  # the same models through `minitron eval <suite>`; tables linked from the report
        from .eval import suite_parts

        paths = {n: r["path"] for n, r in rows.items()}
        res["benchmarks"] = {}
        for suite, cfg in suites.items():
            _, run_suite, _ = suite_parts(suite)
            out = run_suite(list(paths.values()), cfg, names=list(paths))
            res["benchmarks"][suite] = {"results": out["results"], "table": str(Path(cfg.output) / "results.md")}
        if "base" in res["benchmarks"]:
            res["task_accuracy"] = task_accuracy(res["benchmarks"]["base"]["results"], ref)
    _write_json_atomically(run.stage_dir("evaluate") / "evaluation.json", res)
    return res


def task_accuracy(results: dict, ref: str) -> dict:
    """{task: {"chance", model: accuracy..., "retained"}} for the base-suite tasks with a known chance level;
    "retained" = (distilled - chance) / (``ref`` - chance), the share of the teacher's skill above chance that the
    distilled model kept (the pruned one when there is no distillation)."""
    from .eval.base import CHANCE, accuracy_retained

    out = {}
    student = "distilled" if "distilled" in results else "pruned"
    for task in (results.get(ref) or {}):
        if task not in CHANCE or student not in results:
            continue
        row = {"chance": CHANCE[task], **{m: r[task] for m, r in results.items() if task in r}}
        row["retained"] = accuracy_retained(results[student][task], results[ref][task], CHANCE[task])
        row["retained_by"] = student
        out[task] = row
    return out


def gap_recovered(pruned: float, distilled: float, teacher: float) -> float | None:
    """(pruned - distilled) / (pruned - teacher): 1 = the student matches the teacher, 0 = no progress."""
    gap = pruned - teacher
    return None if abs(gap) < 1e-12 else (pruned - distilled) / gap


def _distilled_student(run: Run) -> Path:
    return run.stage_dir("distill") / "final" if run.enabled("distill") else run.stage_dir("prune") / "model"


def _final_student(run: Run) -> Path:
    """The model the run produces: the aligned one when an align stage ran, else the distilled (or pruned) one."""
    if run.enabled("align"):
        model = ((read_done(run, "align") or {}).get("result") or {}).get("model")
        if model:
            return Path(model)
    return _distilled_student(run)


def _stage_export(run: Run, resume: bool) -> dict:
    """The final student as the folder ``minitron publish`` would upload (weights, tokenizer and a
    model card with the architecture, recipe and evaluation) and, if asked, a ModelOpt FP8 checkpoint."""
    from .export.hub import build_publish_folder

    ex = _stage_objects(run, "export")
    src = _final_student(run)
    ev = (read_done(run, "evaluate") or {}).get("result", {})
    table = {name: {"val loss": r["val_loss"], "perplexity": r["perplexity"]} for name, r in ev.get("models", {}).items()}
    res = {"tokens": 0, "artifacts": {}}
    if "hf" in ex.formats:
        dest = run.stage_dir("export") / "hf"
        title = f"{Path(str(run.cfg.teacher)).name}-minitron-{run.out.resolve().name}"
        build_publish_folder(src, dest, evaluation=table or None, title=title)
        (dest / "minitron.json").write_text(json.dumps(_provenance(run), indent=1, default=str))
        res["artifacts"]["hf"] = str(dest)
    if "fp8" in ex.formats:
        from .export.fp8 import FP8Config, export_fp8

        dest = run.stage_dir("export") / "fp8"
        rec = export_fp8(src, prepared_data(run), FP8Config(output=str(dest), calib_samples=ex.fp8_calib_samples,
                                                  seq_len=run.cfg.seq_len, overwrite=True))
        res["artifacts"]["fp8"] = str(dest)
        res["tokens"] += ex.fp8_calib_samples * run.cfg.seq_len
        res["fp8"] = {k: rec[k] for k in ("wall_time_s",) if k in rec}
    return res


def _provenance(run: Run) -> dict:
    """How the exported model was made: the recipe, and each stage's tokens and key numbers."""
    stages = {}
    for s in STAGES:
        done = read_done(run, s)
        if done:
            stages[s] = {"tokens": done["result"].get("tokens"), "wall_time_s": done["wall_time_s"]}
    ev = (read_done(run, "evaluate") or {}).get("result", {})
    return {"teacher": run.cfg.teacher, "config": run.path, "stages": stages,
            "evaluation": {k: {"val_loss": v["val_loss"], "perplexity": v["perplexity"]}
                           for k, v in ev.get("models", {}).items()}}


_RUNNERS = {"data": _stage_data, "correct": _stage_correct, "importance": _stage_importance, "prune": _stage_prune,
            "distill": _stage_distill, "align": _stage_align, "evaluate": _stage_evaluate, "export": _stage_export}


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------

def select_stages(run: Run, from_stage: str | None = None, only: str | None = None) -> tuple[list[str], set[str]]:
    """(stages to consider, stages forced to run) for ``--from`` / ``--only``."""
    for name, v in (("--from", from_stage), ("--only", only)):
        if v is not None and v not in STAGES:
            raise PipelineError(f"{name} {v!r} is not a stage; stages: {', '.join(STAGES)}")
        if v is not None and not run.enabled(v):
            raise PipelineError(f"{name} {v!r}: that stage is not configured in this run (add a {v!r} section)")
    if from_stage and only:
        raise PipelineError("give --from or --only, not both")
    enabled = [s for s in STAGES if run.enabled(s)]
    if only:
        # the data stage is optional here: without it the stage prepares its data into the cache itself
        missing = [up for up in _INPUTS[only] if up != "data" and run.enabled(up) and read_done(run, up) is None]
        if missing:
            raise PipelineError(f"--only {only}: it needs the output of {', '.join(missing)}, which has not run yet; "
                                f"run without --only (or --from {missing[0]}) first")
        return [only], {only}
    if from_stage:
        i = enabled.index(from_stage)
        return enabled, set(enabled[i:])
    return enabled, set()


# stages whose work is spread over the processes of ``accelerate launch`` (trainers and calibration; alignment's
# TRL trainers are distributed trainers too); the others (data, evaluate, export) run on the main process while the
# rest wait for its done.json (:func:`_await_main`)
_PARALLEL = ("correct", "importance", "prune", "distill", "align")
AWAIT_POLL_S = 2.0


def _await_main(d: Path, stage: str) -> None:
    """A non-main process waits for the main process to finish a main-only stage by watching for its done.json,
    not in a collective: a barrier would time out (``ddp_timeout``, 30 min by default) during a long evaluation or
    data preparation. If the main process fails, the launcher stops this one."""
    t0, said = time.time(), False
    while not (d / "done.json").exists():
        if not said and time.time() - t0 > 60:
            logger.info("stage %s runs on the main process; waiting for %s", stage, d / "done.json")
            said = True
        time.sleep(AWAIT_POLL_S)


RUN_MARKER = "run_config.yaml"
_KEEP = ".minitron-keep.json"  # per stage folder: entries that were there before the stage first ran (not ours)


def check_run_dir(run: Run, overwrite: bool = False) -> None:
    """Refuse an ``output_dir`` that would lose the user's files, before any work.

    A new or empty folder is fine, and so is a run folder (``run_config.yaml``) of the same teacher and data (a
    changed option re-runs the stages it affects). A non-empty folder that is not a run, or a run of another teacher
    or data, is refused unless ``overwrite``; even then, files the run does not write are kept. The folder may not
    be, contain or lie inside the teacher or a local data path, and must be writable (it may be the current
    directory: a run only adds its own files there, and deletes only those)."""
    out = run.out
    sources = [p for p in (run.cfg.teacher, run.data.data) if p and Path(str(p)).expanduser().exists()]
    check_output(out, "output_dir", sources=sources, overwrite=True, replaced=False)
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / RUN_MARKER
    prev = None
    if marker.is_file():
        try:
            prev = yaml.safe_load(marker.read_text())
        except yaml.YAMLError:
            prev = None
    if not isinstance(prev, dict) or "teacher" not in prev:
        if not overwrite:
            raise PipelineError(f"output_dir={str(out)!r} is not empty and is not a minitron run (no readable "
                                f"{RUN_MARKER}); choose a new folder, or pass --overwrite to run there anyway (files "
                                f"the run does not write are kept)")
        return
    ours = _config_dump(run)
    changed = [k for k in ("teacher", "data") if str(prev.get(k)) != str(ours.get(k))]
    if changed and not overwrite:
        raise PipelineError(f"output_dir={str(out)!r} holds a run of another " + " and ".join(
            f"{k} ({prev.get(k)!r}, now {ours.get(k)!r})" for k in changed) + "; choose a new folder, or pass "
            "--overwrite to replace that run's stages")


def _clean_stage_dir(d: Path) -> None:
    """Empty a stage folder for a fresh start, deleting only what an earlier run of the stage wrote.

    What is ours: the files a finished stage listed in done.json, or, for a stage interrupted before done.json,
    everything but the entries recorded in ``.minitron-keep.json`` when the stage first ran there. A folder with
    no config.json was never started by a run: nothing in it is deleted."""
    if not d.exists() or not (d / "config.json").exists():
        return
    keep = _kept(d)
    written = None
    try:
        written = json.loads((d / "done.json").read_text()).get("files")
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    for entry in d.iterdir():
        name = entry.name
        if name == _KEEP or name in keep:
            continue
        if written is not None and name not in written and name not in ("config.json", "done.json"):
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _start_stage_dir(d: Path, resume: bool, want: dict) -> None:
    if not resume:
        _clean_stage_dir(d)  # a stale or changed stage starts from scratch
    new = not (d / "config.json").exists()
    d.mkdir(parents=True, exist_ok=True)
    if new:  # whatever is here now was not written by this stage
        write_json_atomically(d / _KEEP, sorted(e.name for e in d.iterdir() if e.name != _KEEP))
    write_json_atomically(d / "config.json", want)


def _kept(d: Path) -> set[str]:
    """The entries of a stage folder recorded as not the stage's own (``.minitron-keep.json``); a damaged record
    keeps nothing."""
    try:
        return set(json.loads((d / _KEEP).read_text())) if (d / _KEEP).exists() else set()
    except (json.JSONDecodeError, TypeError):
        return set()


def _stage_files(d: Path) -> list[str]:
    keep = _kept(d)
    return sorted(e.name for e in d.iterdir() if e.name not in keep and e.name != _KEEP)


def _stage_failed(d: Path, existed: bool) -> None:
    """After a stage raised: a folder this attempt created that holds nothing to resume from is removed (a failed
    first run leaves no config.json behind that a later run would take for a started stage)."""
    if existed or not d.exists() or any(d.glob("checkpoint-*")):
        return
    if set(_stage_files(d)) <= {"config.json"}:
        shutil.rmtree(d, ignore_errors=True)


def run_pipeline(run: Run, from_stage: str | None = None, only: str | None = None, overwrite: bool = False,
                 command: str | None = None) -> dict:
    """Run (or skip, or resume) every configured stage; returns {stage: status}.

    Under ``accelerate launch`` every process walks the same stages (decisions are read from the same
    files after a barrier); the trainer and calibration stages use all processes, and only the main
    process writes markers, evaluation, export and the report. ``overwrite`` allows an ``output_dir`` that is not
    this run's (:func:`check_run_dir`); ``command`` is how the user reruns it (named in error messages).
    """
    stages, forced = select_stages(run, from_stage, only)
    check_run_dir(run, overwrite)
    state = process_state(run.cfg.ddp_timeout)
    main = state.is_main_process
    state.wait_for_everyone()  # every process has checked the folder before the main one writes in it
    out_existed = run.out.exists()
    if main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(run.out / RUN_MARKER, yaml.safe_dump(_config_dump(run), sort_keys=False))
    status: dict[str, str] = {}
    t_run = time.time()
    for stage in stages:
        state.wait_for_everyone()
        d = run.stage_dir(stage)
        want = resolved_config(run, stage)
        done = read_done(run, stage)
        if done is not None and done["config"] == want and stage not in forced:
            logger.info("stage %s: done already (%s), skipped", stage, d / "done.json")
            status[stage] = "skipped (done)"
            continue
        started = d / "config.json"
        resume = done is None and stage not in forced and _started_with(started, want)
        state.wait_for_everyone()  # every process has decided before the main one changes files
        existed = d.exists()
        if main:
            _start_stage_dir(d, resume, want)
        state.wait_for_everyone()
        logger.info("stage %s: %s", stage, "resuming" if resume else "running")
        t0 = time.time()
        try:
            if main or stage in _PARALLEL:
                result = _RUNNERS[stage](run, resume)
            else:
                result = None
                _await_main(d, stage)
        except BaseException as e:
            if main:
                _stage_failed(d, existed)
                if not out_existed and [e.name for e in run.out.iterdir()] == [RUN_MARKER]:
                    shutil.rmtree(run.out, ignore_errors=True)  # a run that failed before anything: no debris
            better = _explain_failure(e, stage, command or f"minitron run {run.path or 'CONFIG'}")
            if better is not None:
                raise better from e
            raise
        if main:
            _write_json_atomically(d / "done.json", {
                "stage": stage, "config": want, "result": result, "wall_time_s": round(time.time() - t0, 1),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": resume, "files": _stage_files(d),
            })
            write_report(run)
        status[stage] = "resumed" if resume else "ran"
    state.wait_for_everyone()
    if main:
        write_report(run)
        logger.info("pipeline finished in %.0f s; report: %s", time.time() - t_run, run.out / "report.md")
    return status


def _started_with(started: Path, want: dict) -> bool:
    """The stage was started (and may be resumed) with exactly this resolved config."""
    try:
        return started.exists() and json.loads(started.read_text()) == want
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("%s is damaged: stage starts over", started)
        return False


def _explain_failure(e: BaseException, stage: str, command: str) -> BaseException | None:
    """The error to show instead of ``e``, in terms of ``minitron run`` (which has no --resume-from-checkpoint: a
    rerun resumes the stage from its newest complete checkpoint), or None to keep ``e``."""
    from .checkpoints import TrainingDivergedError

    if isinstance(e, TrainingDivergedError):
        return e.with_hint(f"lower learning_rate in section {stage!r} (or check the data) and rerun `{command}`: the "
                           f"changed section runs stage {stage} again from its start"
                           + (f" (rerun unchanged, it resumes from {e.checkpoint.name})" if e.checkpoint else ""))
    return None


def _config_dump(run: Run) -> dict:
    d = {k: v for k, v in asdict(run.cfg).items() if v is not None}
    d.update({k: v for k, v in asdict(run.data).items()})
    return json.loads(json.dumps(d, default=str))


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

def _arch(path) -> dict | None:
    from transformers import AutoConfig

    from .arch import count_parameters
    from .loading import resolve_model

    try:
        c = AutoConfig.from_pretrained(resolve_model(path))
    except Exception:  # not there yet
        return None
    n = count_parameters(c)
    return {"total": n["total"], "non_embedding": n["non_embedding"], "layers": c.num_hidden_layers,
            "hidden": c.hidden_size, "mlp": c.intermediate_size, "heads": c.num_attention_heads,
            "kv_heads": c.num_key_value_heads}


def _rel(run: Run, p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(run.out.resolve()))
    except ValueError:
        return str(p)


OUT_OF_DOMAIN_NOTE = ("A student distilled only on the run's data (Python documentation and code for the embedded "
                      "default) was never shown conversations: this shows what distillation on a narrow domain costs, "
                      "not what the student kept. To keep an instruct teacher's chat ability, put chat data in the "
                      "distillation mix or align afterwards (README: 'What the demo's student can and cannot do').")


def task_accuracy_table(ev: dict) -> list[str]:
    """Markdown lines: downstream accuracy of every model and the share of the teacher's kept by the student."""
    acc = ev.get("task_accuracy") or {}
    if not acc:
        return []
    models = [m for m in ev["models"] if any(m in row for row in acc.values())]
    L = ["Downstream accuracy (`minitron eval base`; accuracy retained = (student - chance) / (teacher - chance)):",
         "", "| task | chance | " + " | ".join(models) + " | accuracy retained |",
         "|---|---|" + "---|" * len(models) + "---|"]
    for task, row in acc.items():
        kept = "n/a" if row["retained"] is None else f"{100 * row['retained']:.0f}% ({row['retained_by']})"
        L.append(f"| {task} | {row['chance']:.2f} | " + " | ".join(f"{row[m]:.3f}" if m in row else "" for m in models)
                 + f" | {kept} |")
    return L + [""]


def domain_answers_text(ev: dict) -> list[str]:
    """Markdown lines: every model's greedy continuation of each in-domain prompt, side by side."""
    prompts = ev.get("domain_prompts") or []
    if not prompts:
        return []
    L = ["In the distillation domain: greedy continuations (raw text, no chat template) of the same prompts:", ""]
    for i, prompt in enumerate(prompts):
        L += [f"Prompt {i + 1}:", "", "```", prompt, "```", ""]
        for name, r in ev["models"].items():
            ans = (r.get("domain_answers") or [None] * len(prompts))[i]
            if ans is not None:
                L += [f"- {name}:", "", "```", prompt + ans.rstrip(), "```", ""]
    return L


def write_report(run: Run) -> Path:
    """``output_dir/report.md``: architecture, importance, training curves, evaluation, timing, artifacts."""
    import torch

    dones = {s: read_done(run, s) for s in STAGES}
    L = [f"# Minitron run: {run.cfg.teacher} -> {run.cfg.output_dir}", ""]
    L += [f"Config `{run.path or '(mapping)'}`, data `{run.data.data}`, sequence length {run.cfg.seq_len}. "
          f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
          f"{', CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ', CPU only'}.", ""]

    L += ["## Stages", "", "| stage | status | wall time (s) | tokens | finished |", "|---|---|---|---|---|"]
    total_t = 0.0
    for s in STAGES:
        if not run.enabled(s):
            L.append(f"| {s} | not configured | | | |")
            continue
        d = dones[s]
        if d is None:
            L.append(f"| {s} | pending | | | |")
            continue
        total_t += d["wall_time_s"]
        tok = d["result"].get("tokens")
        L.append(f"| {s} | done{' (resumed)' if d.get('resumed') else ''} | {d['wall_time_s']:.0f} | "
                 f"{tok:,} | {d['finished_at']} |" if tok is not None else
                 f"| {s} | done | {d['wall_time_s']:.0f} | | {d['finished_at']} |")
    L += ["", f"Total stage time: {total_t:.0f} s.", ""]

    teacher_arch = _arch(run.cfg.teacher)
    student_arch = _arch(run.stage_dir("prune") / "model") if dones["prune"] else None
    if teacher_arch:
        L += ["## Architecture", "", "| | teacher | student |", "|---|---|---|"]
        for k, label in (("total", "parameters"), ("non_embedding", "non-embedding parameters"), ("layers", "layers"),
                         ("hidden", "hidden size"), ("mlp", "MLP size"), ("heads", "attention heads"),
                         ("kv_heads", "KV heads")):
            fmt = (lambda v: f"{v / 1e6:.1f}M") if k in ("total", "non_embedding") else str
            sv = fmt(student_arch[k]) if student_arch else "(pending)"
            L.append(f"| {label} | {fmt(teacher_arch[k])} | {sv} |")
        L.append("")

    imp_dir = run.stage_dir("importance") / "scores"
    plots = [p for p in (imp_dir / "importance.png", imp_dir / "layer_importance.png") if p.exists()]
    if plots:
        L += ["## Importance", ""]
        res = dones["importance"]["result"] if dones["importance"] else {}
        if res.get("drop_layers") is not None:
            L += [f"Depth: dropped layers {res['drop_layers']} (metric {res['depth_metric']}).", ""]
        L += [f"![{p.stem}]({_rel(run, p)})" for p in plots] + [""]

    curves = [(s, run.stage_dir(s) / "curves.png") for s in ("correct", "distill")]
    curves = [(s, p) for s, p in curves if p.exists()]
    if curves or dones["distill"]:
        L += ["## Training", ""]
        if dones["distill"]:
            sm = dones["distill"]["result"]["summary"]
            b, a = sm["before"], sm["after"]
            L += [f"Distillation ({sm['loss']}, T={sm['temperature']}): {sm['steps']} steps, {sm['tokens']:,} tokens, "
                  f"{sm['train_runtime_s'] or 0:.0f} s of training. Validation KD loss {b['before_kd_loss']:.3f} -> "
                  f"{a['eval_kd_loss']:.3f}; student LM loss {b['before_student_lm_loss']:.3f} -> "
                  f"{a['eval_student_lm_loss']:.3f} (teacher {a['eval_teacher_lm_loss']:.3f}).", ""]
        if dones["correct"]:
            sm = dones["correct"]["result"]["summary"]
            L += [f"Teacher correction ({sm['mode']}): {sm['steps']} steps, validation LM loss "
                  f"{sm['before_lm_loss']:.3f} -> {sm['after_lm_loss']:.3f}.", ""]
        L += [f"![{s} curves]({_rel(run, p)})" for s, p in curves] + [""]

    if dones.get("align"):
        from .alignment.rounds import rounds_table

        al = dones["align"]["result"]
        L += ["## Alignment", ""]
        for i, r in enumerate(al["sft"], 1):
            L.append(f"- SFT stage {i} on `{r['data']}`: {r['examples']} examples, {r['steps']} steps, training loss "
                     f"{r['train_loss']:.3f}, {r['wall_time_s']:.0f} s.")
        if al.get("rounds"):
            L += ["", "Rounds of RPO (reward on held-out prompts, from the SFT model through each round):", "",
                  rounds_table(al["rounds"])]
        L.append("")

    if dones["evaluate"]:
        ev = dones["evaluate"]["result"]
        v = ev["validation"]
        L += ["## Evaluation", "", f"Held-out `{run.data.data}` validation split, {v['samples']} x {v['seq_len']} "
              f"tokens (the same tokens for every model).", "",
              "| model | parameters | non-embedding | val loss | perplexity |", "|---|---|---|---|---|"]
        for name, r in ev["models"].items():
            L.append(f"| {name} | {r['params_total'] / 1e6:.1f}M | {r['params_non_embedding'] / 1e6:.1f}M | "
                     f"{r['val_loss']:.3f} | {r['perplexity']:.1f} |")
        L.append("")
        if ev.get("gap_recovered") is not None:
            L += [f"**Gap recovered** by distillation: {100 * ev['gap_recovered']:.1f}% "
                  f"(= (pruned - distilled) / (pruned - {ev['gap_reference']}) in validation loss).", ""]
        for suite, b in (ev.get("benchmarks") or {}).items():
            table = Path(b["table"])
            L += [f"Benchmarks: `minitron eval {suite}` ([{_rel(run, table)}]({_rel(run, table)})):", ""]
            if table.exists():
                L += [table.read_text().strip(), ""]
        L += task_accuracy_table(ev)
        L += domain_answers_text(ev)
        answers = [(n, r["answer"]) for n, r in ev["models"].items() if r.get("answer") is not None]
        if answers:
            L += [f"Out of the domain: greedy chat answers to \"{ev['prompt']}\". {OUT_OF_DOMAIN_NOTE}"
                  if "distilled" in ev["models"] else f"Greedy answers to \"{ev['prompt']}\":", ""]
            L += [f"- {n}: {a.strip()!r}" for n, a in answers] + [""]

    final = _final_student(run)
    L += ["## Artifacts", ""]
    if dones["export"]:
        for fmt, p in dones["export"]["result"]["artifacts"].items():
            L.append(f"- `{fmt}`: `{p}`")
        L.append("")
    if final.exists():
        L += [f"Final student: `{final}`. Load it with vanilla transformers, or talk to it / serve it:", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"model = AutoModelForCausalLM.from_pretrained({str(final)!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({str(final)!r})", "```", "", "```bash",
              f"minitron generate {final} --prompt \"What is the capital of France?\"",
              f"minitron evaluate {run.cfg.teacher} {final}", "```", ""]
    path = run.out / "report.md"
    write_text_atomically(path, "\n".join(L))
    return path
