"""The interface every pruning compensation implements (how to add one: the package's docstring)."""

from __future__ import annotations

from typing import ClassVar

import torch


class Compensation:
    """A change to the source weights that brings the pruned model closer to the source. Trimming slices what
    :meth:`apply` returns, so the output stays a vanilla checkpoint: weights change, shapes do not.

    ``plan`` below is the :class:`~minitron_hf.pruning.trim.PrunePlan` (kept indices into the source, most
    important first). ``stats`` is reserved for calibration statistics (e.g. per-layer Gram matrices of a
    projection's inputs) that trim passes once some compensation needs them; today it is always None."""

    name: ClassVar[str] = ""
    """Its switch: ``make_plan(..., <name>=True)``, and the ``PruneConfig`` field of that name."""
    help: ClassVar[str] = ""
    """One line: what it does, and where it comes from."""
    record: ClassVar[str] = ""
    """Its key in the plan's record (``PrunePlan.to_json``: the ``kept`` of ``pruning.json``); "" for none."""

    def decide(self, config, importance, plan, stats=None) -> dict[int, object]:
        """What to do, per source layer, once the kept indices are chosen (``importance``: the scores the plan was
        made from, None for depth-only pruning). JSON-able; the plan keeps it as ``plan.compensations[name]`` and
        hands it back to :meth:`apply`. Layers with nothing to do are left out."""
        return {}

    def apply(self, plan, layer: int | None, name: str, t: torch.Tensor, stats=None) -> torch.Tensor:
        """Source tensor ``t`` just before trim slices it: returned changed (same shape) or as it is. ``name`` is the
        tensor's name inside decoder layer ``layer`` (``self_attn.o_proj.weight``: the key of the family's slicing
        rules), or the checkpoint name of a tensor outside the layers (``layer`` None). Never changes ``t`` in
        place."""
        return t
