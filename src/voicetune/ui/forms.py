"""Forms generated from the typed configs: one field per documented option (no Gradio here).

:func:`form_fields` reads the options of a config class (``TrainConfig`` with a backend's options class,
``PrepareConfig``) through :func:`voicetune.config.option_fields`: their flat names, documentation, choices,
bounds and ``basic`` flag. The tabs turn each :class:`FormField` into a widget; :func:`to_overrides` turns
the widgets' values back into options by flat name, which the library validates
(:func:`voicetune.backends.registry.train_config`); :func:`cli_flags` writes them as ``voicetune train``
flags for the training process.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any

from voicetune.config import OptionField, option_fields
from voicetune.ui.safety import UiSafetyError

GROUP_TITLES = {"": "training", "eval": "evaluation", "backend_options": "backend"}


@dataclass(frozen=True)
class FormField:
    """One option as a form field."""

    name: str  # flat name: the flag without dashes, the keyword of voicetune.train(**options)
    group: str  # "" (generic), "eval" or "backend_options"
    kind: str  # "bool" | "int" | "float" | "str" | "choice" | "list"
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    basic: bool = False
    resumable: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    @property
    def info(self) -> str:
        return f"{self.help} ({self.flag})"


def _field(o: OptionField, choices: dict[str, list[str]]) -> FormField:
    f = o.field
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # narrowed above
    tp = typing.get_type_hints(o.owner)[f.name]
    tp = typing.get_origin(tp) or tp
    options = tuple(choices.get(o.flat) or f.metadata.get("choices") or ())
    kind = ("bool" if tp is bool else "list" if tp is list else "choice" if options
            else {int: "int", float: "float"}.get(tp, "str"))
    return FormField(o.flat, o.group, kind, default, f.metadata.get("help", ""), options,
                     f.metadata.get("low"), f.metadata.get("high"), bool(f.metadata.get("basic")),
                     bool(f.metadata.get("resumable")))


def form_fields(cls: type, options: type | None = None,
                choices: dict[str, list[str]] | None = None) -> list[FormField]:
    """The form fields of config class ``cls`` (with backend options class ``options``), in declaration
    order; options without a command-line flag are left out. ``choices``: allowed values by flat name that the
    class does not declare itself (e.g. ``backend``: the registered backends)."""
    fields = option_fields(cls, options)
    return [_field(o, choices or {}) for o in fields.values() if o.field.metadata.get("cli", True)]


def train_fields(backend: str) -> list[FormField]:
    """Every option of ``voicetune train --backend BACKEND``: generic, evaluation and the backend's own."""
    from voicetune.backends.registry import available_backends, options_class
    from voicetune.config import TrainConfig

    return form_fields(TrainConfig, options_class(backend), {"backend": available_backends()})


def sections(fields: list[FormField]) -> dict[str, list[FormField]]:
    """The form's sections: "basic" (every group's basic options), then the advanced ones per group."""
    out: dict[str, list[FormField]] = {"basic": [f for f in fields if f.basic]}
    for group in GROUP_TITLES:
        out[group] = [f for f in fields if not f.basic and f.group == group]
    return out


def _number(f: FormField, value: Any) -> int | float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UiSafetyError(f"{f.label}: {value!r} is not a number ({f.flag})") from None
    if f.kind == "int":
        if number != int(number):
            raise UiSafetyError(f"{f.label}: {value!r} must be a whole number ({f.flag})")
        return int(number)
    return number


def parse_value(f: FormField, value: Any) -> Any:
    """A widget's value as the option's type (an empty number or list field means its default)."""
    if value is None or (isinstance(value, str) and not value.strip() and f.kind in ("int", "float", "list")):
        return f.default
    if f.kind == "bool":
        return bool(value)
    if f.kind in ("int", "float"):
        return _number(f, value)
    if f.kind == "list":
        items = value if isinstance(value, list) else [v for v in re.split(r"[,\s]+", str(value)) if v]
        return [_number(dataclasses.replace(f, kind="float"), v) for v in items]
    if f.kind == "choice" and value not in f.choices:
        raise UiSafetyError(f"{f.label}: {value!r} is not one of {list(f.choices)} ({f.flag})")
    return str(value)


def display_value(f: FormField, value: Any) -> Any:
    """An option's value as its widget shows it (lists as comma-separated text)."""
    if f.kind == "list":
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value or [])
    return value


def to_overrides(
    fields: list[FormField], values: dict[str, Any], only_changed: bool = True
) -> dict[str, Any]:
    """Options by flat name from widget values by flat name (unknown names ignored); with ``only_changed``,
    only those that differ from their default."""
    out = {}
    for f in fields:
        if f.name not in values:
            continue
        v = parse_value(f, values[f.name])
        if not only_changed or v != f.default:
            out[f.name] = v
    return out


def cli_flags(fields: list[FormField], overrides: dict[str, Any]) -> list[str]:
    """``voicetune train`` flags setting ``overrides`` (the inverse of the CLI's parsing of them)."""
    by_name = {f.name: f for f in fields}
    argv: list[str] = []
    for name, value in overrides.items():
        f = by_name[name]
        if f.kind == "bool":
            argv.append(f.flag if value else f"--no-{f.flag[2:]}")
        elif f.kind == "list":
            if value:  # an empty list is every list option's default
                argv += [f.flag, *(f"{v:g}" for v in value)]
        else:
            argv += [f.flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?:[ =]([^\s-][^\s]*))?")


def recommended_values(lines: list[str], fields: list[FormField]) -> dict[str, Any]:
    """The options named by ``--flag [value]`` in doctor's recommended settings (first line of each), by flat
    name and parsed; flags the form does not have are ignored. A bare ``--flag`` sets a bool option."""
    by_name = {f.name: f for f in fields}
    out: dict[str, Any] = {}
    for line in lines:
        for flag, value in _FLAG.findall(line.splitlines()[0] if line else ""):
            f = by_name.get(flag.replace("-", "_"))
            if f is None:
                continue
            try:
                out[f.name] = True if f.kind == "bool" and not value else parse_value(f, value)
            except UiSafetyError:
                continue
    return out
