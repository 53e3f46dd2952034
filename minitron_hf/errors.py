"""One base class for errors meant for the user.

Every error that the user can fix (a bad option, a file that cannot be used, an output that would
overwrite something) derives from :class:`MinitronError`; its message names the field or file, the
value and what is allowed. The CLI prints such an error on one line and exits with
:data:`EXIT_USER_ERROR`. Anything else that escapes a command is a bug: the CLI prints a short line
asking to run with ``-v`` for the traceback, and exits with :data:`EXIT_BUG`.

``MinitronError`` subclasses ``ValueError`` so that callers (and tests) that catch ``ValueError``
keep working; but the CLI catches only ``MinitronError``: a stray ``ValueError`` from a library is a bug.

A training run stopped by SIGTERM after saving a checkpoint (``--enable-jit-checkpoint true``,
:class:`minitron_hf.resume.TrainingPreempted`) has not finished and is not an error: the CLI prints one line naming
the checkpoint and ``--resume-from-checkpoint true``, and exits with :data:`EXIT_PREEMPTED`, 143 (128 + SIGTERM's 15,
what a shell reports for a process SIGTERM ended), so that a scheduler or a script tells a preempted run (requeue
it, resume) from a finished one (0).
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = 143


class MinitronError(ValueError):
    """An error the user can fix; the message says what and how."""
