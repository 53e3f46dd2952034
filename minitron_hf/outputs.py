"""Where outputs go: checks made before any heavy work, and writes that never leave half a file.

Every command that writes a folder calls :func:`check_output` before it loads a model:

- the output must not be, contain, or lie inside any of its sources (``--overwrite`` of a parent of the
  source model would otherwise delete the source);
- it must not be the current directory, an ancestor of it, the home directory or a filesystem root;
- an existing output is refused unless ``overwrite`` (``allow_empty`` lets an existing empty folder pass);
- its nearest existing ancestor must be writable (a real temporary file is created and removed: a
  read-only mount or a missing permission fails here, not after calibration), with ``need_bytes`` free.

Writes are atomic: :func:`write_checkpoint_atomically` builds a folder under a temporary sibling name
and renames it into place; :func:`write_text_atomically` / :func:`write_json_atomically` do the same
for one file. A crash or a full disk leaves the previous content (or nothing), never a partial file.

A trainer's ``output_dir`` is added to, not replaced: :func:`require_output_dir` checks its ``final/`` with
:func:`check_output` and keeps the inputs out of its checkpoint folders (named here: ``checkpoint-N``,
``tmp-checkpoint-N``), and :func:`remove_checkpoints` clears an earlier run's for ``--overwrite``. Which of them are
complete is :mod:`minitron_hf.checkpoints`'s to say; refusing an earlier run's checkpoints or resolving
``--resume-from-checkpoint`` is :func:`minitron_hf.resume.check_output_dir`'s.

What the project caches between runs (the converted default model, data prepared on the fly, lm-eval task files,
the bfcl-eval environment) goes under one folder, :func:`cache_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import MinitronError
from .locks import OutputBusyError, command_inputs, command_scope, lock_output, note_input  # noqa: F401

logger = logging.getLogger(__name__)


class OutputError(MinitronError):
    """An output location that cannot or must not be written."""


CACHE_VARIABLE = "MINITRON_CACHE"


def cache_dir() -> Path:
    """Where converted models (and the other caches) live: ``$MINITRON_CACHE`` or ``~/.cache/minitron_hf``.

    A ``MINITRON_CACHE`` that is set but empty (it would write ``./data`` into the current folder), or that names a
    file, or a path under a file, is an :class:`OutputError` naming the variable, raised at the first use (before
    any model loads). Writability is checked where the cache is filled (:func:`build_once`): a read-only cache
    that already holds what a command needs is fine."""
    raw = os.environ.get(CACHE_VARIABLE)
    if raw is None:
        return Path.home() / ".cache" / "minitron_hf"
    if not raw.strip():
        raise OutputError(f"{CACHE_VARIABLE} is set but empty; unset it (the cache is then ~/.cache/minitron_hf) or "
                          f"set it to a folder")
    path = Path(raw).expanduser()
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise OutputError(f"{CACHE_VARIABLE}={raw!r}: {base} is a file, not a folder; set {CACHE_VARIABLE} to a "
                          f"folder (it is created if missing)")
    return path


def lock_folder(res: Path, field: str = "output", shown=None) -> None:
    """Lock the output ``res`` (resolved) for the current command (:mod:`minitron_hf.locks`); the lock files live in
    the cache's ``locks/`` folder, never beside or inside the output."""
    lock_output(res, cache_dir() / "locks", field, shown)


def check_cache_writable(path: Path) -> None:
    """The cache entry ``path`` can be created: else an :class:`OutputError` naming ``MINITRON_CACHE``."""
    try:
        check_writable(path, CACHE_VARIABLE if os.environ.get(CACHE_VARIABLE) else "cache")
    except OutputError as e:
        raise OutputError(f"{e}; the cache ({path.parent}) must be writable to fill it: set {CACHE_VARIABLE} to a "
                          f"writable folder") from None


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_writable(path, field: str, need_bytes: int = 0) -> None:
    """The folder ``path`` (or its nearest existing ancestor) accepts a new file, with ``need_bytes`` free."""
    base = _nearest_existing(Path(path).expanduser().resolve())
    if not base.is_dir():
        raise OutputError(f"{field}={str(path)!r}: {base} exists and is not a directory")
    try:
        with tempfile.NamedTemporaryFile(prefix=".minitron-write-test-", dir=base):
            pass
    except OSError as e:
        raise OutputError(f"{field}={str(path)!r}: cannot write in {base} ({e.strerror or e}); choose a writable "
                          f"location") from None
    if need_bytes:
        free = shutil.disk_usage(base).free
        if free < need_bytes:
            raise OutputError(f"{field}={str(path)!r}: {free / 2**30:.2f} GiB free in {base}, about "
                              f"{need_bytes / 2**30:.2f} GiB needed; free some space or choose another location")


# Temporary and lock siblings are named after the output (``.tmp-NAME-XXXXXXXX``, ``.old-NAME-PID``,
# ``.NAME.minitron-lock``): a name this much below the filesystem's limit leaves room for them.
NAME_MARGIN = 32


def _check_names(out: Path, res: Path, field: str, output) -> None:
    """Every component of the output fits the filesystem's name limit with room for our siblings' prefixes."""
    base = _nearest_existing(res)
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
        path_max = os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in res.parts[1:]:
        n = len(part.encode())
        limit = name_max - NAME_MARGIN if part == res.name else name_max
        if n > limit:
            raise OutputError(f"{field}={str(output)!r}: the name {part[:40]}... is {n} bytes; at most {limit} here "
                              f"(the filesystem allows {name_max}, and the command writes temporary siblings with "
                              f"longer names); choose a shorter name")
    if len(str(res).encode()) > path_max - 2 * NAME_MARGIN - 256:
        raise OutputError(f"{field}={str(output)!r} is {len(str(res).encode())} bytes long; the filesystem allows "
                          f"{path_max} for a whole path, with files inside it; choose a shorter path")


def _check_link(out: Path, res: Path, field: str, output, replaced: bool) -> None:
    """A dangling link is never an output; a link to a folder is refused where the command replaces the output (the
    rename would replace the link, not the folder it points to), and followed where it only adds to it."""
    if not out.is_symlink():
        return
    target = os.readlink(out)
    if not out.exists():
        raise OutputError(f"{field}={str(output)!r} is a symbolic link to {target}, which does not exist; remove the "
                          f"link or choose another folder")
    if replaced:
        raise OutputError(f"{field}={str(output)!r} is a symbolic link to {res}; give that folder itself, or "
                          f"another folder")


OUTPUT_FIELDS = frozenset({"output", "output_dir", "logging_dir", "run_name", "resume_from_checkpoint", "dry_run"})
"""Config fields that name what a command writes, never an input (``run_name`` defaults to ``output_dir``)."""


def input_paths(*configs, skip=OUTPUT_FIELDS) -> list[Path]:
    """Every existing file or folder that a field of ``configs`` names: the inputs a command reads, of every kind
    (model, teacher, student, data and each source of a blend, scores, tokenizer, reward model, evaluation files).

    ``configs`` are dataclasses (or dicts); values are visited through lists, dicts and JSON-encoded lists/dicts
    (a blend given on the command line). Fields named in ``skip`` are outputs. Used as ``sources`` of
    :func:`check_output`, so that an output never is, contains or lies inside anything a command reads."""
    found: list[Path] = []

    def visit(v, depth=0):
        if depth > 8:
            return
        if isinstance(v, (str, os.PathLike)):
            text = str(v).strip()
            if text[:1] in "[{":
                try:
                    return visit(json.loads(text), depth + 1)
                except ValueError:
                    pass
            if not text or "\n" in text or len(text) > 4096:
                return
            try:
                p = Path(text).expanduser()
                if p.exists() or p.is_symlink():
                    found.append(p)
            except (OSError, ValueError):
                pass
        elif isinstance(v, dict):
            for x in v.values():
                visit(x, depth + 1)
        elif isinstance(v, (list, tuple, set, frozenset)):
            for x in v:
                visit(x, depth + 1)

    for cfg in configs:
        if cfg is None:
            continue
        if dataclasses.is_dataclass(cfg):
            items = [(f.name, getattr(cfg, f.name, None)) for f in dataclasses.fields(cfg)]
        elif isinstance(cfg, dict):
            items = list(cfg.items())
        else:
            items = [(None, cfg)]
        for name, value in items:
            if name not in skip:
                visit(value)
    return found


def check_output(output, field: str = "output", *, sources=(), overwrite: bool = False, allow_empty: bool = False,
                 need_bytes: int = 0, replaced: bool = True, error=None) -> Path:
    """Check an output folder before any work (see the module docstring); returns it as a Path.

    ``sources`` are the inputs the command reads (model folders, data files; :func:`input_paths` lists every path
    a config names): the output may not equal, contain or lie inside any of them, whatever ``overwrite`` says.
    ``replaced=False`` is for a folder the command adds to but never replaces as a whole (a run folder): it may
    then be or contain the current directory, or be a link to a folder. Inside a :func:`command_scope` (every CLI
    command) the output is also locked for the rest of the command (:func:`lock_output`). ``error``: the
    :class:`~minitron_hf.errors.MinitronError` class to raise (default :class:`OutputError`)."""
    try:
        return _check_output(output, field, sources, overwrite, allow_empty, need_bytes, replaced)
    except OutputError as e:
        if error is None or isinstance(e, error):
            raise
        raise error(str(e)) from None


def _check_output(output, field, sources, overwrite, allow_empty, need_bytes, replaced) -> Path:
    if output is None or str(output).strip() == "":
        raise OutputError(f"{field} is required: the directory to write to")
    out = Path(output).expanduser()
    if "\x00" in str(output):
        raise OutputError(f"{field}={str(output)!r} contains a NUL character")
    res = out.resolve()
    _check_link(out, res, field, output, replaced)
    _check_names(out, res, field, output)
    cwd = Path.cwd().resolve()
    if replaced and (_within(cwd, res) or res == Path.home().resolve()) or res == Path(res.anchor):
        raise OutputError(f"{field}={str(output)!r} is {res}, which is (or contains) the current directory, the "
                          f"home directory or a filesystem root; give a new folder, e.g. {field}=out/model")
    for src in [*sources, *command_inputs()]:  # and the files the command read outside its configs (its YAML)
        if src is None:
            continue
        s = Path(src).expanduser()
        if not (s.exists() or s.is_symlink()):
            continue
        s = s.resolve()
        if _within(s, res):
            raise OutputError(f"{field}={str(output)!r} is or contains the input {str(src)!r}; writing there would "
                              f"destroy it (--overwrite does not change this): choose another folder")
        if _within(res, s):
            raise OutputError(f"{field}={str(output)!r} lies inside the input {str(src)!r}; choose a folder outside "
                              f"it")
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{field}={str(output)!r} exists and is not a directory")
        empty = not any(out.iterdir())
        if not overwrite and not (allow_empty and empty):
            raise OutputError(f"{field}={str(output)!r} already exists; pass --overwrite to replace it, or choose "
                              f"another folder")
    check_writable(out, field, need_bytes)
    lock_folder(res, field, output)
    return out


# --------------------------------------------------------------------------------------------------
# A trainer's output_dir
# --------------------------------------------------------------------------------------------------
# The Trainers (distillation, teacher correction, SFT, RPO) add to their output_dir rather than replace it: it holds
# checkpoint-N folders, a tmp-checkpoint-N/checkpoint-N while one is written (minitron_hf.training), the finite
# diverged-checkpoint-N a divergence started from, and final/, the folder a finished run replaces. Which
# checkpoint-N are complete is for minitron_hf.checkpoints to say.

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
TMP_CHECKPOINT_PREFIX = "tmp-checkpoint"  # checkpoints being written: output_dir/tmp-checkpoint-N/checkpoint-N
DIVERGED_CHECKPOINT_PREFIX = "diverged-checkpoint"  # finite checkpoints a divergence started from: never resumed
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")


def checkpoint_step(path: str | Path) -> int | None:
    """N for a folder named ``checkpoint-N``; None otherwise."""
    m = _CHECKPOINT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoint_folders(out: Path) -> list[Path]:
    """``checkpoint-N`` folders and unfinished ``tmp-checkpoint-*`` saves of ``out``."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.is_dir() and (checkpoint_step(p) is not None or p.name.startswith(TMP_CHECKPOINT_PREFIX + "-")))


def require_output_dir(output_dir, error=OutputError, *, args=None, sources=()) -> Path:
    """A trainer's ``output_dir`` was given (``args``: transformers would silently use ./trainer_output) and is
    writable, and its ``final/`` (the folder a run replaces) is not, around or inside any of ``sources`` (the
    models it reads): :func:`check_output`; else ``error``. The output_dir itself may hold other things, the sources
    included, but none inside a checkpoint folder. The whole output_dir is locked for the command."""
    if args is not None and not getattr(args, "output_dir_given", True):
        raise error("output_dir is required: the folder for checkpoints and the final model (--output-dir DIR)")
    check_output(Path(output_dir) / "final", "output_dir's final model", sources=sources, overwrite=True,
                 error=error)
    _check_sources_outside_checkpoints(Path(output_dir), sources, error)
    # the whole output_dir is this command's for its duration (checkpoints, logs, final/)
    lock_folder(Path(output_dir).expanduser().resolve(), "output_dir", output_dir)
    return Path(output_dir)


def _check_sources_outside_checkpoints(out: Path, sources, error) -> None:
    """No input lies inside a folder of ``out`` that training writes or removes (``checkpoint-N``,
    ``tmp-checkpoint-*``; ``final`` is :func:`check_output`'s): distilling from ``out/checkpoint-1`` into ``out``
    would overwrite the student it reads (a new checkpoint-1, or ``--overwrite`` removing the old ones)."""
    out = out.expanduser().resolve()
    for src in sources:
        if src is None or not Path(src).expanduser().exists():
            continue
        s = Path(src).expanduser().resolve()
        if out not in s.parents:
            continue
        top = out / s.relative_to(out).parts[0]
        if checkpoint_step(top) is not None or top.name.startswith(TMP_CHECKPOINT_PREFIX):
            raise error(f"the input {str(src)!r} lies inside {top}, which a run into output_dir={str(out)!r} writes, "
                        f"replaces or removes; copy it out of output_dir first, or choose another output_dir")


def remove_checkpoints(output_dir: str | Path) -> list[Path]:
    """Remove the ``checkpoint-N`` and ``tmp-checkpoint-*`` folders of ``output_dir`` (nothing else); returns them."""
    gone = checkpoint_folders(Path(output_dir))
    for p in gone:
        shutil.rmtree(p)
    if gone:
        logger.info("removed %d checkpoint folder(s) of an earlier run from %s: %s", len(gone), output_dir,
                    ", ".join(p.name for p in gone))
    return gone


def dir_size(path) -> int:
    """Bytes of the files under ``path`` (a model folder): the basis of ``need_bytes`` estimates."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def disk_full_message(e: OSError, what) -> str:
    return f"no space left on the device while writing {what}; nothing was replaced. Free some space and run again"


def write_checkpoint_atomically(out_dir, write) -> Path:
    """Call ``write(tmp_dir)`` and rename the finished directory into place.

    A crash leaves at most a ``.tmp-*`` sibling, never a half-written ``out_dir``. An existing
    ``out_dir`` is replaced only after the new one is complete. A full disk is an :class:`OutputError`.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        write(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            if old.is_symlink():
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OutputError(disk_full_message(e, out_dir)) from e
        raise
    return out_dir


def write_text_atomically(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling and a rename: never a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OutputError(disk_full_message(e, path)) from e
        raise
    return path


def write_json_atomically(path, obj) -> Path:
    return write_text_atomically(path, json.dumps(obj, indent=1, default=str))


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def read_json(path, field: str | None = None):
    """A JSON file; a missing, unreadable or corrupt one is an error naming the file (and ``field``, the option
    that named it), never a bare 'Expecting value'."""
    path = Path(path)
    where = f"{field}={str(path)!r}" if field else str(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise OutputError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise OutputError(f"{where} is a directory; expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"is not valid JSON ({e})", field) from None


class CorruptFileError(MinitronError):
    """A file that exists but cannot be read (truncated weights, garbage JSON)."""

    def __init__(self, path, why: str, field: str | None = None):
        self.path = Path(path)
        super().__init__(f"{field}={str(path)!r}: {why}" if field else f"{path}: {why}")


def safetensors_problem(f: Path) -> str | None:
    """Why a safetensors file cannot be loaded (missing, truncated, bad header), or None. Reads only the header: the
    file must be at least as long as the header says (8 + header + the end of the last tensor)."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{f.name} is truncated ({size} bytes)"
            n = int.from_bytes(head, "little")
            if n < 2 or n > size - 8:
                return f"{f.name} has an unreadable header"
            meta = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    except FileNotFoundError:
        return f"{f.name} is missing"
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"{f.name} is unreadable ({e})"
    if size < 8 + n + end:
        return f"{f.name} is truncated ({size} of {8 + n + end} bytes)"
    return None


def _holds_files(path: Path) -> bool:
    return any(p.is_file() or p.is_symlink() for p in path.rglob("*"))


@contextlib.contextmanager
def no_debris(path):
    """On failure inside the block, remove ``path`` if the block created it and it holds no file (only empty
    folders): a command that fails leaves nothing behind, and keeps whatever it did write (checkpoints, logs)."""
    p = Path(path) if path else None
    existed = p is None or p.exists()
    try:
        yield
    except BaseException:
        if not existed and p.is_dir() and not _holds_files(p):
            shutil.rmtree(p, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` (created if missing) while filling a shared cache (prepared data, the converted
    default model): concurrent ranks of one launch, or two runs on one machine, build it once and the others wait and
    reuse it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(target: Path, ready, build) -> None:
    """Fill the shared cache entry ``target`` with ``build()`` unless ``ready()`` says it is there. Concurrent callers
    (the ranks of one launch, two runs on one machine) build it once: ``build`` runs under :func:`file_lock` on
    ``<target>.lock`` and ``ready()`` is asked again once the lock is held, so the others wait and then reuse it."""
    if ready():
        return
    check_cache_writable(target)
    with file_lock(target.with_name(target.name + ".lock")):
        if not ready():
            build()
