"""Reading and checking a ``minitron run`` config: everything before any heavy work."""

from __future__ import annotations

import copy

from ..config import ConfigError, check_fields, instantiate, load_yaml, safe_load_yaml
from ..data import DataConfig
from .base import PipelineError, Run, RunConfig
from .stages import ORDER, Sections, with_sections


def set_override(values: dict, item: str) -> None:
    """``distill.max_steps=10`` or ``seq_len=128`` (value parsed as YAML) into the config mapping."""
    sections = [s.name for s in with_sections()]
    if "=" not in item:
        raise PipelineError(f"--set {item!r} must be KEY=VALUE or SECTION.KEY=VALUE")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] not in sections):
        raise PipelineError(f"--set {item!r}: expected KEY=VALUE or SECTION.KEY=VALUE with a section among "
                            f"{', '.join(sections)}")
    # YAML 1.2 booleans only: `save_strategy=no` means the string "no", not False
    try:  # the bounded loader: an alias bomb in a --set value is refused like one in a file
        value = (raw.strip() if raw.strip().lower() in ("yes", "no", "on", "off", "y", "n")
                 else safe_load_yaml(raw, f"--set {item!r}: the value"))
    except ConfigError as e:
        raise PipelineError(str(e)) from None
    if len(parts) == 2:
        if not isinstance(values.get(parts[0]), dict):
            values[parts[0]] = {}
        values[parts[0]][parts[1]] = value
    else:
        values[parts[0]] = value


def load_run(path=None, overrides=(), values: dict | None = None, check_model: bool = True) -> Run:
    """Read and check a run config (YAML file and/or a mapping, then ``--set`` overrides).

    ``check_model=False`` skips the checks that need the teacher's config (resolving it may download it)."""
    classes = [RunConfig, Sections, DataConfig]
    data = load_yaml(path, classes) if path is not None else {}
    data = copy.deepcopy({**data, **(values or {})})
    for item in overrides or ():
        set_override(data, item)
    where = str(path) if path else "run config"
    check_fields(data, classes, where)
    for stage in with_sections():
        if data.get(stage.name) is not None and not isinstance(data[stage.name], dict):
            raise PipelineError(f"{where}: section {stage.name!r} must be a mapping of options (or absent)")
    cfg, secs, data_cfg = instantiate(classes, data, where=where)  # RunConfig checks output_dir, seq_len, ...
    sections = {}
    for stage in with_sections():
        sec = getattr(secs, stage.name)
        if sec is not None:
            stage.check_section(sec, where)
        sections[stage.name] = None if sec is None and not stage.always else dict(sec or {})
    run = Run(cfg, data_cfg, sections, ORDER, str(path) if path else None)
    for stage in ORDER:  # build every stage's option objects once, so that bad values fail now, not hours in
        if stage.enabled(run):
            stage.check(run, where, check_model)
    return run
