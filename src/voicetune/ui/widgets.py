"""Gradio widgets shared by the tabs: a widget per config option, file URLs, messages."""

from __future__ import annotations

import html
import urllib.parse
from pathlib import Path
from typing import Any

import gradio as gr

from voicetune.ui.forms import FormField, display_value


def option_widget(f: FormField, value: Any = None, visible: bool = True) -> Any:
    """The widget of one option: a checkbox, a drop-down of its choices, a whole-number box, or a text box
    (decimal numbers are typed as text, so 5e-06 stays exactly that). Label: the option's name; info: its
    documentation and flag."""
    value = f.default if value is None else value
    common: dict[str, Any] = {
        "label": f.label,
        "info": f.info,
        "visible": visible,
        "elem_id": f"opt-{f.name}",
    }
    if f.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if f.kind == "choice":
        return gr.Dropdown(choices=list(f.choices), value=value, **common)
    if f.kind == "int":
        return gr.Number(value=value, precision=0, minimum=f.low, maximum=f.high, **common)
    return gr.Textbox(value=str(display_value(f, value)) if f.kind != "float" else f"{value:g}", **common)


def widget_value(f: FormField, value: Any) -> Any:
    """An option's value as its widget (from :func:`option_widget`) takes it."""
    if f.kind == "float":
        return f"{value:g}"
    return display_value(f, value)


def file_url(path: Path) -> str:
    """The URL Gradio serves a workspace file under (the workspace's output folders are allowed paths)."""
    return "/gradio_api/file=" + urllib.parse.quote(str(Path(path).resolve()))


def message(kind: str, text: str) -> str:
    """A one-line HTML message: kind is ok, error, warn or info."""
    return f"<div class='vt-msg vt-msg-{kind}'>{html.escape(text)}</div>"


def progress_html(done: float, total: float, what: str, running: bool = True) -> str:
    """A progress bar with "what (done/total)"; counts as integers, amounts (seconds of audio) to 0.1."""
    pct = 100.0 * done / total if total else 0.0
    state = "running" if running else "done"
    return (
        f"<div class='vt-progress vt-{state}'><div class='vt-bar'><div style='width:{pct:.1f}%'></div></div>"
        f"<span>{html.escape(what)} ({_amount(done)}/{_amount(total)})</span></div>"
    )


def _amount(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def choices_update(choices: list[str], current: str | None = None) -> Any:
    """A drop-down refreshed with ``choices``, keeping ``current`` when it is still there, else the first."""
    value = current if current in choices else (choices[0] if choices else None)
    return gr.update(choices=choices, value=value)
