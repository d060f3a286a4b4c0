"""Typed configuration: nested dataclasses loaded from YAML, with ``a.b=c`` overrides.

Unknown keys are rejected with the full dotted key named; values are checked against the
field types (``int``, ``float``, ``str``, ``bool``, enums, ``Optional``, lists, dicts and nested
dataclasses). The training config itself lives in ``orpo.trainer_config``; this module is the
generic machinery, also used by the pipeline stages.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not match its schema: names the offending key."""


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or '<root>'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys under "
            f"'{prefix.rstrip('.') or '<root>'}': {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"'{key}': {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"'{key}' must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{key}.")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"'{key}' must be one of {[m.value for m in tp]}, got {value!r}") from None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value) if not args else {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "5e-6" as a string
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"'{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a nested dict; values are parsed as YAML scalars/lists."""
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override '{override}' is not of the form key=value")
        dotted, raw = override.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override '{dotted}': the value {raw!r} is not valid YAML: {error}") from None
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def require(condition: bool, key: str, message: str, value: Any) -> None:
    """Range checks in ``__post_init__``: a bad value names its key, at load time."""
    if not condition:
        raise ConfigError(f"'{key}' {message}, got {value!r}")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    return from_dict(cls, apply_overrides(data, overrides or []))


def replace_values(config: T, values: dict[str, Any]) -> T:
    """A copy of ``config`` with dotted keys replaced: typed composition without string round trips.

    Each value is checked against its field's type exactly as a YAML value would be (unknown keys
    and wrong types raise ``ConfigError`` naming the key); sections are rebuilt with
    ``dataclasses.replace``, so their own validation runs again.
    """
    for dotted, value in values.items():
        config = _replace_path(config, dotted.split("."), value, dotted)
    return config


def _replace_path(node: Any, parts: list[str], value: Any, dotted: str) -> Any:
    if not dataclasses.is_dataclass(node):
        raise ConfigError(f"'{dotted}': '{parts[0]}' is not under a config section")
    fields = {f.name for f in dataclasses.fields(node) if f.init}
    name = parts[0]
    if name not in fields:
        prefix = dotted[: len(dotted) - len(".".join(parts))]
        raise ConfigError(f"unknown config key '{dotted}' (known keys under "
                          f"'{prefix.rstrip('.') or '<root>'}': {', '.join(sorted(fields))})")
    if len(parts) > 1:
        new = _replace_path(getattr(node, name), parts[1:], value, dotted)
    else:
        hint = typing.get_type_hints(type(node))[name]
        new = _coerce(hint, to_dict(value) if dataclasses.is_dataclass(value) else value, dotted)
    return dataclasses.replace(node, **{name: new})


def to_dict(config: Any) -> Any:
    """A plain, YAML/JSON-ready dict of a config (enums as their values)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, enum.Enum):
        return config.value
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config
