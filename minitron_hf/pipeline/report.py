"""``output_dir/report.md``: the stage table, then each stage's own section (its :meth:`Stage.report`)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from ..outputs import write_text_atomically
from .base import Run, read_done
from .stages import ORDER


def write_report(run: Run) -> Path:
    """Rewritten after every stage: the run, the stages' status, then architecture, importance, training,
    alignment, evaluation and artifacts as the stages report them."""
    dones = {s.name: read_done(run, s.name) for s in ORDER}
    L = [f"# Minitron run: {run.cfg.teacher} -> {run.cfg.output_dir}", ""]
    L += [f"Config `{run.path or '(mapping)'}`, data `{run.data.data}`, sequence length {run.cfg.seq_len}. "
          f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
          f"{', CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ', CPU only'}.", ""]

    L += ["## Stages", "", "| stage | status | wall time (s) | tokens | finished |", "|---|---|---|---|---|"]
    total_t = 0.0
    for stage in ORDER:
        s, d = stage.name, dones[stage.name]
        if not stage.enabled(run):
            L.append(f"| {s} | not configured | | | |")
            continue
        if d is None:
            L.append(f"| {s} | pending | | | |")
            continue
        total_t += d["wall_time_s"]
        tok = d["result"].get("tokens")
        L.append(f"| {s} | done{' (resumed)' if d.get('resumed') else ''} | {d['wall_time_s']:.0f} | "
                 f"{tok:,} | {d['finished_at']} |" if tok is not None else
                 f"| {s} | done | {d['wall_time_s']:.0f} | | {d['finished_at']} |")
    L += ["", f"Total stage time: {total_t:.0f} s.", ""]
    for stage in ORDER:
        d = dones[stage.name]
        L += stage.report(run, None if d is None else stage.result.from_dict(d["result"]))
    path = run.out / "report.md"
    write_text_atomically(path, "\n".join(L))
    return path
