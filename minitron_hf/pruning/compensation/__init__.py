"""Pruning compensations: changes to the source weights, made as they are sliced, that start the pruned model closer
to the source than plain removal does. The output stays a vanilla checkpoint: weights change, shapes do not.

Each compensation is one module here holding a :class:`~.base.Compensation` (its name, a line of help, and two
hooks: :meth:`~.base.Compensation.decide` when the plan is made, :meth:`~.base.Compensation.apply` on each source
tensor before trim slices it) and one entry in :data:`COMPENSATIONS`. ``make_plan(..., <name>=True)`` switches
one on; the plan records what it decided, and trim calls it on every tensor.

To add one: a module ``<name>.py`` with a subclass and its instance ``COMPENSATION``, a line below, a boolean field
of the same name in ``PruneConfig`` (the ``prune``/``minitron run`` option), and a test that pins what it changes.
A method that needs calibration statistics (least-squares refits from Gram matrices) reads them from the hooks'
``stats`` argument, which trim then has to be given.
"""

from __future__ import annotations

from . import head_merge
from .base import Compensation

COMPENSATIONS: dict[str, Compensation] = {c.name: c for c in (head_merge.COMPENSATION,)}

__all__ = ["COMPENSATIONS", "Compensation", "switched_on", "switches"]


def switches(cfg) -> dict[str, bool]:
    """``make_plan``'s switches from a config with a boolean field per registered compensation (``PruneConfig``)."""
    return {name: bool(getattr(cfg, name)) for name in COMPENSATIONS}


def switched_on(on: dict[str, bool]) -> list[Compensation]:
    """The registered compensations that ``on`` (name -> switched on) turns on, in registry order; an unknown name is
    an error naming the known ones."""
    unknown = sorted(set(on) - set(COMPENSATIONS))
    if unknown:
        raise TypeError(f"unknown pruning compensation {unknown[0]!r}; known: {', '.join(COMPENSATIONS)}")
    return [c for name, c in COMPENSATIONS.items() if on.get(name)]
