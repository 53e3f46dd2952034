"""The alignment package's error, at the bottom of the package so that ``data``, ``sft``, ``rpo`` and ``rounds``
import it (and each other) one way only."""

from __future__ import annotations

from ..errors import MinitronError


class AlignmentError(MinitronError):
    """Bad alignment input (dataset, rewards, chat template, options); the message names the field."""
