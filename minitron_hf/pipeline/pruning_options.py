"""The ``prune:`` section's options, which two stages read: ``importance`` calibrates with them (keyed on the
scoring ones only) and ``prune`` trims with them. A neutral home, so neither stage module imports the other."""

from __future__ import annotations

from ..config import instantiate
from ..pruning.config import PruneConfig
from .base import Run, teacher_dir


def prune_options(run: Run) -> PruneConfig:
    """The section as a :class:`~minitron_hf.pruning.config.PruneConfig` (its target parsed once, there), with what
    the pipeline wires in: the (corrected) teacher in, ``prune/model`` out, the run's ``seq_len`` unless the section
    sets its own."""
    sec = dict(run.sections["prune"])
    sec.setdefault("seq_len", run.cfg.seq_len)
    sec.update(model=teacher_dir(run), output=str(run.stage_dir("prune") / "model"), overwrite=True)
    return instantiate([PruneConfig], sec, where="section 'prune'")[0]
