"""Config dataclasses from YAML + command-line overrides, one parser for every stage.

Each stage describes its options as dataclasses whose fields carry ``metadata={"help": ...}``
(the HfArgumentParser convention). :func:`parse_args` builds an ``argparse`` parser from them, reads
``--config FILE.yaml`` first (its keys become defaults) and lets any ``--field value`` override it.
A key that no dataclass knows is an error naming the nearest valid field, before any work.

Every YAML the project reads goes through :func:`read_yaml` / :func:`safe_load_yaml`: at most
:data:`YAML_MAX_BYTES` per file and :data:`YAML_MAX_NODES` values once aliases are expanded (an alias bomb is
refused naming the file, not a MemoryError). Values are checked by :func:`check_value`: a bool is never an integer
or a number, and an integer field takes ``64``, ``64.0`` and ``"64"`` alike (YAML and command line), never ``64.7``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import json
import types
import typing
from pathlib import Path

import yaml

from .errors import MinitronError


class ConfigError(MinitronError):
    """A config file or option that cannot be used."""


# --- value checks for __post_init__ (the validation rule: docs/development.md) ---

def at_least(cfg, names, low: int = 1, error: type[MinitronError] = ConfigError, optional: tuple[str, ...] = ()) -> None:
    """Raise ``error`` naming the first field of ``names`` whose value is below ``low`` (fields in ``optional`` may
    also be None: unset)."""
    for name in names:
        v = getattr(cfg, name)
        if v is None and name in optional:
            continue
        if v is None or v < low:
            raise error(f"{name}={v!r} must be >= {low}" + (" (or unset)" if name in optional else ""))


def one_of(name: str, value, allowed, error: type[MinitronError] = ConfigError) -> None:
    """Raise ``error`` when ``value`` is not in ``allowed``, naming the field and the allowed values."""
    if value not in allowed:
        raise error(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")


def _base_type(tp):
    """(scalar type, is_list) for annotations like ``int | None`` or ``list[int] | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    if origin is dict:
        return dict, False
    return tp, False


def _str2bool(v: str) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _cli_int(v: str) -> int:
    """An integer option on the command line, read as a YAML value is (:func:`check_value`): ``64`` and ``64.0``
    are 64; ``64.7`` and ``true`` are refused."""
    try:
        return check_value("value", v, int)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected an integer (a whole number), got {v!r}") from None


def _fields(classes):
    seen = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen:
                raise TypeError(f"field {f.name!r} is defined by both {seen[f.name].__name__} and {cls.__name__}")
            seen[f.name] = cls
            yield cls, f, hints[f.name]


def renamed_fields(classes) -> dict[str, str]:
    """``{old name: new name}`` of the options of ``classes`` that were renamed: the ``RENAMED`` class attributes
    (a ``ClassVar``) of each class and its bases, less names that are fields again. An old name in a YAML file, a
    run config or on the command line is an error naming the new one, not an unknown field."""
    out = {}
    for cls in classes:
        for c in reversed(cls.__mro__):
            out.update(vars(c).get("RENAMED", {}))
    current = {f.name for _, f, _ in _fields(classes)}
    return {old: new for old, new in out.items() if old not in current}


def renamed_message(old: str, new: str) -> str:
    return f"field {old!r} was renamed: use {new!r} (--{new.replace('_', '-')} on the command line)"


class _RenamedOption(argparse.Action):
    """A hidden command-line option under an old name: using it is an error naming the new option."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        raise argparse.ArgumentError(self, "renamed: use --" + self.new.replace("_", "-"))


def build_parser(classes, parser: argparse.ArgumentParser | None = None, append_fields=()) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, help="YAML file whose keys set defaults for the options below")
    for old, new in renamed_fields(classes).items():
        flag = "--" + old.replace("_", "-")
        parser.add_argument(*dict.fromkeys([flag, "--" + old]), dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                            nargs="*", action=_RenamedOption, new=new, help=argparse.SUPPRESS)
    for cls, f, tp in _fields(classes):
        scalar, is_list = _base_type(tp)
        kw: dict = {"dest": f.name, "help": f.metadata.get("help", ""), "default": argparse.SUPPRESS}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        flag = "--" + f.name.replace("_", "-")
        if f.name in append_fields:
            kw.update(action="append", metavar="KEY=VALUE")
        elif scalar is bool:
            kw.update(type=_str2bool, nargs="?", const=True, metavar="BOOL")
        elif scalar is dict:
            kw.update(type=json.loads, metavar="JSON")
        elif scalar not in (int, float, str):
            continue  # structured objects (e.g. accelerate's ParallelismConfig): YAML only
        elif is_list:
            kw.update(type=_cli_int if scalar is int else scalar, nargs="+")
        else:
            kw.update(type=_cli_int if scalar is int else scalar)
        names = [flag] if f.name == f.name.replace("_", "-") else [flag, "--" + f.name]
        parser.add_argument(*names, **kw)
    return parser


YAML_MAX_BYTES = 10 * 2**20
"""Largest YAML file the project reads (configs and run markers are a few KiB)."""
YAML_MAX_NODES = 100_000
"""Most values a YAML document may hold once its aliases are expanded: an alias bomb (``&a [x, x, ...]``,
``&b [*a, *a, ...]`` nested a few levels) is a few hundred bytes that expand to billions of values."""


def _expanded_size(root, limit: int):
    """Values in the node graph ``root`` with every alias expanded (memoised per node, so a bomb is counted, not
    built), or None if an alias refers to a node that contains it (a recursive document). Stops above ``limit``."""
    memo: dict[int, int] = {}
    busy: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            busy.discard(key)
            kids = node.value if isinstance(node, yaml.SequenceNode) else [x for kv in node.value for x in kv]
            memo[key] = min(1 + sum(memo[id(k)] for k in kids), limit + 1)
            continue
        if key in memo:
            continue
        if key in busy:
            return None
        if isinstance(node, yaml.ScalarNode):
            memo[key] = 1
            continue
        busy.add(key)
        stack.append((node, True))
        kids = node.value if isinstance(node, yaml.SequenceNode) else [x for kv in node.value for x in kv]
        for k in kids:
            if id(k) in busy:
                return None
            if id(k) not in memo:
                stack.append((k, False))
    return memo[id(root)]


def safe_load_yaml(text: str, where: str, max_nodes: int = YAML_MAX_NODES):
    """``yaml.safe_load(text)``, bounded: a document that holds more than ``max_nodes`` values once its aliases are
    expanded, a recursive alias or nesting too deep for the parser is a :class:`ConfigError` naming ``where``, as
    is invalid YAML. Every YAML the project reads goes through here (or :func:`read_yaml`)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node, max_nodes)
        if n is None:
            raise ConfigError(f"{where}: YAML with a recursive alias (an anchor used inside itself) is not allowed")
        if n > max_nodes:
            raise ConfigError(f"{where}: YAML expands to more than {max_nodes:,} values (an alias bomb?); a config "
                              f"holds at most {max_nodes:,}")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: Path, where: str | None = None, max_bytes: int = YAML_MAX_BYTES):
    """The YAML file ``path``, bounded in size (``max_bytes``) and in expansion (:func:`safe_load_yaml`); errors
    are :class:`ConfigError` naming ``where`` (default ``config='PATH'``)."""
    path = Path(path)
    where = where or f"config={str(path)!r}"
    if not path.exists():
        raise ConfigError(f"{where}: no such file")
    if not path.is_file():
        raise ConfigError(f"{where} is a directory; expected a YAML file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"{where} is {size:,} bytes; a YAML file may be at most {max_bytes:,} bytes")
    try:
        with open(path, "rb") as fh:
            text = fh.read(max_bytes + 1).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not a text (UTF-8) file") from None
    if len(text.encode("utf-8")) > max_bytes:  # grew while being read
        raise ConfigError(f"{where}: a YAML file may be at most {max_bytes:,} bytes")
    return safe_load_yaml(text, where)


def load_yaml(path: Path, classes) -> dict:
    """A command's config file: its fields checked against ``classes``. The file is an input of the command like
    any other: no output the command writes may be, contain or lie inside it (:func:`~minitron_hf.locks.note_input`)."""
    from .locks import note_input

    path = Path(path)
    data = read_yaml(path) or {}
    note_input(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config={str(path)!r}: expected a mapping of option names to values")
    check_fields(data, classes, str(path))
    return data


def check_fields(data: dict, classes, where: str, reserved=()) -> None:
    """Every key of ``data`` must be a field of one of ``classes`` (and not in ``reserved``, fields that
    the caller sets itself); the error names the nearest valid field."""
    valid = [f.name for _, f, _ in _fields(classes) if f.name not in reserved]
    renamed = renamed_fields(classes)
    for k in data:
        if k in renamed:
            raise ConfigError(f"{where}: {renamed_message(k, renamed[k])}")
        if k in reserved:
            raise ConfigError(f"{where}: field {k!r} is set by the pipeline and cannot be given here")
        if k not in valid:
            near = difflib.get_close_matches(k, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{where}: unknown field {k!r}{hint} Valid fields: {', '.join(sorted(valid))}")


_NONE = type(None)


def describe(tp) -> str:
    """What an annotation allows, in words: 'an integer', 'a list of strings', 'a number or null', ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [describe(a) for a in args if a is not _NONE]
        return " or ".join(dict.fromkeys(names + (["null"] if _NONE in args else [])))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (list, tuple):
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if tp is dict or origin is dict:
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def check_value(name: str, value, tp):
    """``value`` checked against the annotation ``tp`` and returned (numbers given as text, which YAML 1.1 makes of
    ``1e-4``, become numbers); anything of the wrong type is a :class:`ConfigError` naming the field, the value
    and what is allowed, raised at load time instead of deep inside a stage. Classes it does not know (accelerate's
    ParallelismConfig, ...) pass unchecked."""
    def bad():
        return ConfigError(f"{name}={value!r} must be {describe(tp)}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if _NONE in args:
                return None
            raise bad()
        for member in (a for a in args if a is not _NONE):
            try:
                return check_value(name, value, member)
            except ConfigError:
                continue
        raise bad()
    if value is None:
        raise bad()
    if origin is typing.Literal:  # True == 1 in Python: a bool matches only a bool
        if any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in args):
            return value
        raise bad()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [check_value(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad()
        if len(args) == 2:
            return {k: check_value(f"{name}.{k}", v, args[1]) for k, v in value.items()}
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        if any(value == m.value and isinstance(value, bool) == isinstance(m.value, bool) for m in tp):
            return value
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return _str2bool(value)
            except argparse.ArgumentTypeError:
                raise bad() from None
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.strip())
            except ValueError:
                raise bad() from None
            if f.is_integer():
                return int(f)
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    return value  # a structured object (YAML only) that its own class validates


def instantiate(classes, values: dict, where: str | None = None):
    """Split a flat dict of values over the dataclasses, check every value's type, and build them. A key that is
    the old name of a renamed option (:func:`renamed_fields`) is an error naming the new one."""
    renamed = renamed_fields(classes)
    for k in values:
        if k in renamed:
            raise ConfigError(f"{where + ': ' if where else ''}{renamed_message(k, renamed[k])}")
    out = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in values.items():
            if k in fields:
                try:
                    kw[k] = check_value(k, v, hints[k])
                    choices = fields[k].metadata.get("choices")
                    if choices and kw[k] is not None and kw[k] not in choices:
                        raise ConfigError(f"{k}={v!r} is not allowed; choose one of {', '.join(map(str, choices))}")
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}" if where else str(e)) from None
        try:
            out.append(cls(**kw))
        except MinitronError as e:  # the class's own __post_init__ check: say where the value came from
            if not where or str(e).startswith(where):
                raise
            try:
                better = type(e)(f"{where}: {e}")
            except TypeError:  # an error class with its own constructor arguments: keep it as it is
                raise e from None
            raise better from None
        except ValueError as e:  # a library's own check of its options (TrainingArguments.__post_init__, ...)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{where + ': ' if where else ''}{msg}") from None
    return out


def parse_args(classes, argv=None, parser=None, append_fields=(), namespace: argparse.Namespace | None = None):
    """Parse ``argv`` (YAML via ``--config`` + overrides) into one instance of each dataclass."""
    if namespace is None:
        parser = build_parser(classes, parser, append_fields)
        namespace = parser.parse_args(argv)
    values = {}
    if getattr(namespace, "config", None):
        values.update(load_yaml(namespace.config, classes))
    for k, v in vars(namespace).items():
        if k in ("config", "command", "func"):
            continue
        if k in append_fields:  # KEY=VALUE items update the YAML mapping key by key
            merged = dict(values.get(k) or {})
            merged.update(parse_items(v, k))
            v = merged
        values[k] = v
    return instantiate(classes, values)


def parse_items(items, field_name: str) -> dict:
    """``["hidden_size=3072", "drop_layers=16,17"]`` -> ``{"hidden_size": "3072", ...}``."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--{field_name.replace('_', '-')} {it!r} must be KEY=VALUE")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out
