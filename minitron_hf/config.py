"""Config dataclasses from YAML + command-line overrides, one parser for every stage.

Each stage describes its options as dataclasses whose fields carry ``metadata={"help": ...}``
(the HfArgumentParser convention). :func:`parse_args` builds an ``argparse`` parser from them, reads
``--config FILE.yaml`` first (its keys become defaults) and lets any ``--field value`` override it.
A key that no dataclass knows is an error naming the nearest valid field, before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import difflib
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file or option that cannot be used."""


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


def _fields(classes):
    seen = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen:
                raise TypeError(f"field {f.name!r} is defined by both {seen[f.name].__name__} and {cls.__name__}")
            seen[f.name] = cls
            yield cls, f, hints[f.name]


def build_parser(classes, parser: argparse.ArgumentParser | None = None, append_fields=()) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, help="YAML file whose keys set defaults for the options below")
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
            kw.update(type=scalar, nargs="+")
        else:
            kw.update(type=scalar)
        names = [flag] if f.name == f.name.replace("_", "-") else [flag, "--" + f.name]
        parser.add_argument(*names, **kw)
    return parser


def load_yaml(path: Path, classes) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config={str(path)!r}: no such file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config={str(path)!r}: expected a mapping of option names to values")
    check_fields(data, classes, str(path))
    return data


def check_fields(data: dict, classes, where: str, reserved=()) -> None:
    """Every key of ``data`` must be a field of one of ``classes`` (and not in ``reserved``, fields that
    the caller sets itself); the error names the nearest valid field."""
    valid = [f.name for _, f, _ in _fields(classes) if f.name not in reserved]
    for k in data:
        if k in reserved:
            raise ConfigError(f"{where}: field {k!r} is set by the pipeline and cannot be given here")
        if k not in valid:
            near = difflib.get_close_matches(k, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"{where}: unknown field {k!r}{hint} Valid fields: {', '.join(sorted(valid))}")


def _coerce(name: str, value, tp):
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string: numbers given as text become numbers, anything
    else of the wrong type is an error naming the field."""
    scalar, is_list = _base_type(tp)
    if is_list or scalar not in (int, float) or not isinstance(value, str):
        return value
    try:
        return scalar(float(value)) if scalar is float else int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be {'a number' if scalar is float else 'an integer'}") from None


def instantiate(classes, values: dict):
    """Split a flat dict of values over the dataclasses and build them."""
    out = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        out.append(cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items() if k in names}))
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
