"""YAML onto typed dataclasses: the project's YAML typing (``1e-3`` is a float), dotted
``key.sub=value`` overrides, and :func:`from_dict`, which checks every key and type against a
dataclass and raises :class:`ConfigError` naming the full dotted key and how to fix it.

Knows nothing of the run's sections: ``mvd.config`` holds the schema and loads it with these.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Literal

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``1e-3`` (no dot) as a float, as people write it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A config that cannot run; the message names the dotted key and how to fix it."""


def apply_override(raw: dict, item: str) -> None:
    """Set ``raw``'s dotted ``key.sub`` to the YAML-typed value of ``item`` = "key.sub=value"."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form dotted.key=value "
                          f"(e.g. train.max_steps=10)")
    key, _, text = item.partition("=")
    key = key.strip().removeprefix("--")
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key part in {key!r}")
    try:
        value = yaml_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            head = ".".join(parts[:i + 1])
            raise ConfigError(f"override {item!r}: '{head}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def from_dict(cls: type, raw: Any, source: str = "", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types; errors name the key."""
    where = f" (in {source})" if source else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or '<top>'}'{where} must be a mapping of keys, "
                          f"got {type(raw).__name__} {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{where}{hint}. Known keys under "
                              f"'{prefix.rstrip('.') or '<top>'}': {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        tp = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value if value is not None else {}, source, key + ".")
        else:
            kwargs[name] = _check_type(value, tp, key, where)
    return cls(**kwargs)


def _check_type(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    bad = None
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}'{where} is {value!r}; it must be one of: "
                              f"{', '.join(map(str, choices))}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad = "a number"
        else:
            value = float(value)
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad = "an integer"
    elif tp is bool:
        if not isinstance(value, bool):
            bad = "true or false"
    elif tp is str:
        if value is None:
            value = ""
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. resume=none stays str; a numeric path is still a path
        elif not isinstance(value, str):
            bad = "a string"
    elif tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            bad = "a list"
        else:
            value = list(value)
    elif tp is dict or origin is dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            bad = "a mapping"
    if bad:
        raise ConfigError(f"config key '{key}'{where} must be {bad}, got "
                          f"{type(value).__name__} {value!r}; fix it in the YAML or override it "
                          f"as {key}=VALUE")
    return value
