"""Typed dataclass options with their documentation: the declaration (:func:`opt`) and the checks every
config class shares (choices, numeric bounds, YAML's types), for :mod:`voicetune.config` and every backend's
options dataclass. Errors are :class:`ConfigError`s that name the option (its flag) that fixes them."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A config value is invalid; the message names the option that fixes it."""


def opt(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, cli: bool = True,
        low: float | None = None, high: float | None = None, basic: bool = False, resumable: bool = False,
        flag: str | None = None, item: type | None = None) -> Any:
    """Declare a config field with its documentation.

    ``choices``: the allowed values. ``low``/``high``: inclusive numeric bounds, checked for every config
    class by :func:`check_fields` (the error names the flag and the range). ``basic``: listed in the short
    ``--help`` (the others in its advanced sections). ``resumable``: may change when a run is resumed.
    ``flag``: the option's flat name when it is not the group's prefix + the field name. ``cli=False``: no
    flag. ``item``: the type of a list's items (checked and converted when loaded; ``low``/``high`` then
    bound every item).
    """
    meta = {"help": help, "choices": choices, "cli": cli, "low": low, "high": high, "basic": basic,
            "resumable": resumable, "flag": flag, "item": item}
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(type(default), default), metadata=meta)
    return field(default=default, metadata=meta)


def field_help(cls: type, name: str) -> str:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


def flat_name(cls: type, f: dataclasses.Field[Any]) -> str:
    """The option's flat name: its ``flag`` metadata, else the class's ``FLAG_PREFIX`` + the field name."""
    return f.metadata.get("flag") or getattr(cls, "FLAG_PREFIX", "") + f.name


def flag_of(cls: type, name: str) -> str:
    """The command-line flag of field ``name`` of ``cls`` (e.g. ``--eval-max-sentences``)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return "--" + flat_name(cls, f).replace("_", "-")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _num(v: Any) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def check_fields(obj: Any) -> None:
    """The checks every config declares in :func:`opt` metadata: choices, ``low``/``high`` bounds, finite
    floats."""
    cls = type(obj)
    for f in dataclasses.fields(obj):
        if f.metadata.get("group"):
            continue
        value, flag = getattr(obj, f.name), flag_of(cls, f.name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{f.name}={value!r} is not one of {list(choices)}; set {flag} to one of them")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name} must be a finite number, not {v}; fix {flag}")
            low, high = f.metadata.get("low"), f.metadata.get("high")
            if (low is not None and v < low) or (high is not None and v > high):
                bound = (f"lie in [{_num(low)}, {_num(high)}]" if low is not None and high is not None
                         else f"be >= {_num(low)}" if low is not None else f"be <= {_num(high)}")
                raise ConfigError(f"{f.name} must {bound}, not {value!r}; fix {flag}")


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def coerce(value: Any, tp: Any, name: str, item: type | None = None) -> Any:
    """``value`` as the field type ``tp``: ints for floats, YAML's text like '1e-4' for floats (YAML 1.1 reads
    an exponent without a dot as a string), whole floats for ints; a bool is never a number; list items as
    ``item``."""
    origin = typing.get_origin(tp) or tp
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)] if item else list(value)
    if origin is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is int and isinstance(value, float) and value.is_integer():
        return int(value)
    wrong_bool = isinstance(value, bool) != (origin is bool)  # YAML's true is an int to Python, not to us
    if origin in (int, float, str, bool) and (not isinstance(value, origin) or wrong_bool):
        raise ConfigError(f"{name} must be of type {origin.__name__}, got {value!r}")
    return value
