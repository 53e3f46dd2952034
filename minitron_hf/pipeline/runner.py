"""Running the stages of ``minitron run`` in order: skip what is done, resume what was interrupted, re-run what
changed, and never delete a file the run did not write."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

from ..config import ConfigError, read_yaml
from ..distributed import process_state
from ..outputs import check_output, input_paths, write_json_atomically, write_text_atomically
from ..resume import TrainingPreempted
from ..training import TrainingDivergedError
from .base import PipelineError, Run, config_dump, fingerprint, read_done
from .report import write_report
from .stages import STAGES, stage_named

logger = logging.getLogger(__name__)


def resolved_config(run: Run, stage: str) -> dict:
    """What a stage's result depends on: its options, the data, and the fingerprints of its inputs."""
    sec = stage_named(stage).key(run)
    inputs = {}
    for up in stage_named(stage).inputs:
        if run.enabled(up):
            done = read_done(run, up)
            inputs[up] = fingerprint(done) if done else None
    return json.loads(json.dumps({
        "stage": stage, "options": sec, "data": asdict(run.data), "teacher": run.cfg.teacher,
        "seq_len": run.cfg.seq_len, "eval_samples": run.cfg.eval_samples, "inputs": inputs,
    }, default=str))


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
        missing = [up for up in stage_named(only).inputs if up != "data" and run.enabled(up) and read_done(run, up) is None]
        if missing:
            raise PipelineError(f"--only {only}: it needs the output of {', '.join(missing)}, which has not run yet; "
                                f"run without --only (or --from {missing[0]}) first")
        return [only], {only}
    if from_stage:
        i = enabled.index(from_stage)
        return enabled, set(enabled[i:])
    return enabled, set()


# stages whose work is not spread over the processes of ``accelerate launch`` (Stage.parallel False: data, evaluate,
# export) run on the main process while the rest wait for its done.json (:func:`_await_main`)
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
REPORT = "report.md"
_KEEP = ".minitron-keep.json"  # per stage folder: its entries that are not the stage's (there when it last started)
_RECORDS = ("config.json", "done.json")  # the runner's records in a stage folder: when it started, when it ended


def stage_record(d: Path) -> str | None:
    """The stage whose output the folder ``d`` is, by the records the runner writes there (``done.json`` when the
    stage ends, ``config.json`` when it starts: every version of the pipeline wrote both, with the stage's name), or
    None for a folder no run wrote (a model or data the user put there)."""
    for name, keys in (("done.json", ("config", "finished_at")), ("config.json", ("options", "inputs"))):
        try:
            rec = json.loads((d / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("stage"), str) and all(k in rec for k in keys):
            return rec["stage"]
    return None


def check_run_dir(run: Run, overwrite: bool = False, stages=None) -> None:
    """Refuse an ``output_dir`` that would lose the user's files, before any work.

    A new or empty folder is fine, and so is a run folder (``run_config.yaml``) of the same teacher and data (a
    changed option re-runs the stages it affects). A non-empty folder that is not a run, or a run of another teacher
    or data, is refused unless ``overwrite``. Even then a run replaces only what a run wrote: a folder that is not a
    run and holds a ``run_config.yaml`` or ``report.md`` of its own is refused, and so is a non-empty stage folder
    (``data/``, ``prune/``, ... of ``stages``, by default every configured one) that is not that stage's output
    (:func:`stage_record`); files the user added to a run's stage folders, or next to them, are kept. The folder may
    not be, contain or lie inside the teacher or a local data path, and must be writable (it may be the current
    directory: a run only adds its own files there, and deletes only those)."""
    out = run.out
    # the teacher and every data source (a blend's included); each stage checks its own inputs again
    check_output(out, "output_dir", sources=input_paths(run.cfg, run.data), overwrite=True, replaced=False)
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / RUN_MARKER
    prev = None
    if marker.is_file():
        try:  # the bounded loader, as for every YAML the project reads
            prev = read_yaml(marker, f"{RUN_MARKER} of output_dir={str(out)!r}")
        except ConfigError:
            prev = None
    is_run = isinstance(prev, dict) and "teacher" in prev
    theirs = [] if is_run else [n for n in (RUN_MARKER, REPORT) if (out / n).exists() or (out / n).is_symlink()]
    if theirs:
        raise PipelineError(f"output_dir={str(out)!r} is not a minitron run and holds {' and '.join(theirs)}, which "
                            f"the run would replace (--overwrite replaces only what a run wrote); move "
                            f"{'them' if len(theirs) > 1 else 'it'} elsewhere or choose another output_dir")
    for stage in (stages if stages is not None else [s for s in STAGES if run.enabled(s)]):
        _check_stage_dir(run, stage)
    if not is_run and not overwrite:
        raise PipelineError(f"output_dir={str(out)!r} is not empty and is not a minitron run (no readable "
                            f"{RUN_MARKER}); choose a new folder, or pass --overwrite to run there anyway (files "
                            f"the run does not write are kept)")
    if is_run:
        ours = config_dump(run)
        changed = [k for k in ("teacher", "data") if str(prev.get(k)) != str(ours.get(k))]
        if changed and not overwrite:
            raise PipelineError(f"output_dir={str(out)!r} holds a run of another " + " and ".join(
                f"{k} ({prev.get(k)!r}, now {ours.get(k)!r})" for k in changed) + "; choose a new folder, or pass "
                "--overwrite to replace that run's stages")


def _check_stage_dir(run: Run, stage: str) -> None:
    """The stage's folder is new, empty or the stage's own output (:func:`stage_record`): else it is refused."""
    d = run.stage_dir(stage)
    if not (d.exists() or d.is_symlink()) or (d.is_dir() and (not any(d.iterdir()) or stage_record(d) == stage)):
        return
    what = "is not a folder" if not d.is_dir() else \
        f"holds files that no run of stage {stage!r} wrote (no stage record in {stage}/config.json)"
    raise PipelineError(f"output_dir={str(run.out)!r}: {stage}/ {what}, and stage {stage!r} writes there; "
                        f"--overwrite replaces only what a run wrote: move {d} elsewhere or choose another output_dir")


def _remove(p: Path) -> None:
    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def _ours(d: Path) -> set[str]:
    """The entries of a run's stage folder that the stage wrote: the files its done.json lists (and the records),
    or, for a stage that has not finished, every entry but those recorded in ``.minitron-keep.json`` when it last
    started (an older version's done.json without a list counts as unfinished)."""
    entries = {e.name for e in d.iterdir()} - {_KEEP}
    written = None
    try:
        written = json.loads((d / "done.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        pass
    if isinstance(written, list) and all(isinstance(n, str) for n in written):
        return entries & (set(written) | set(_RECORDS))
    return entries - _kept(d)


def _start_stage_dir(d: Path, resume: bool, want: dict) -> None:
    """Make the stage folder ready for the stage: for a fresh start (not ``resume``), delete what an earlier run of
    the stage wrote (:func:`_ours`), nothing else. ``d`` is new, empty, or the stage's own (:func:`check_run_dir`).

    The order keeps the records true at every step, so that a crash part-way leaves a folder whose records still
    say what is whose: first the entries that stay are recorded as not the stage's (``.minitron-keep.json``), then
    done.json goes (the stage is unfinished), then the rest of the stage's files; config.json is never removed, only
    replaced by the new start record (a folder of ours always holds one)."""
    d.mkdir(parents=True, exist_ok=True)
    if not resume:
        ours = _ours(d)
        write_json_atomically(d / _KEEP, sorted({e.name for e in d.iterdir()} - ours - {_KEEP}))
        (d / "done.json").unlink(missing_ok=True)
        for name in sorted(ours - set(_RECORDS)):
            _remove(d / name)
    write_json_atomically(d / "config.json", want)


def _kept(d: Path) -> set[str]:
    """The entries of a stage folder recorded as not the stage's own (``.minitron-keep.json``); a damaged record
    keeps nothing."""
    try:
        return set(json.loads((d / _KEEP).read_text())) if (d / _KEEP).exists() else set()
    except (json.JSONDecodeError, TypeError):
        return set()


def _stage_files(d: Path) -> list[str]:
    """What the stage wrote (its done.json's ``files``): every entry but those there before it started."""
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
    check_run_dir(run, overwrite, stages)
    state = process_state(run.cfg.ddp_timeout)
    main = state.is_main_process
    state.wait_for_everyone()  # every process has checked the folder before the main one writes in it
    out_existed = run.out.exists()
    if main:
        run.out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(run.out / RUN_MARKER, yaml.safe_dump(config_dump(run), sort_keys=False))
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
            _check_stage_dir(run, stage)  # still ours (checked before any work; a long run gives time to change it)
            _start_stage_dir(d, resume, want)
        state.wait_for_everyone()
        logger.info("stage %s: %s", stage, "resuming" if resume else "running")
        t0 = time.time()
        try:
            if main or stage_named(stage).parallel:
                result = stage_named(stage).run(run, resume).to_dict()
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
            write_json_atomically(d / "done.json", {
                "stage": stage, "config": want, "result": result, "wall_time_s": round(time.time() - t0, 1),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": resume, "files": _stage_files(d),
            })
            write_report(run)
        status[stage] = "resumed" if resume else "ran"
    state.wait_for_everyone()
    if main:
        write_report(run)
        logger.info("pipeline finished in %.0f s; report: %s", time.time() - t_run, run.out / REPORT)
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
    if isinstance(e, TrainingPreempted):
        return TrainingPreempted(e.step, e.checkpoint, e.output_dir,
                                 resume=f"rerun `{command}` unchanged: stage {stage} resumes from it")
    if isinstance(e, TrainingDivergedError):
        return e.with_hint(f"lower learning_rate in section {stage!r} (or check the data) and rerun `{command}`: the "
                           f"changed section runs stage {stage} again from its start"
                           + (f" (rerun unchanged, it resumes from {e.checkpoint.name})" if e.checkpoint else ""))
    return None

