"""The Export tab: choose a run's checkpoint (the best one by default), build the model package with
:func:`voicetune.export` under ``exports/``, and download it as a zip."""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from voicetune.ui.safety import UiSafetyError
from voicetune.ui.widgets import choices_update, message
from voicetune.ui.workspace import Workspace

MANIFEST = "voicetune.json"


def checkpoint_choices(run_dir: Path) -> tuple[list[tuple[str, str]], str | None]:
    """(label, value) of the run's checkpoints, 'best' and 'latest' first when marked, and the default choice
    (best when the evaluation marked one, else latest)."""
    from voicetune.run import best_checkpoint, latest_checkpoint, list_checkpoints

    best, latest = best_checkpoint(run_dir), latest_checkpoint(run_dir)
    out = []
    if best is not None:
        out.append((f"best ({best.name})", "best"))
    if latest is not None:
        out.append((f"latest ({latest.name})", "latest"))
    out += [(p.name, p.name) for p in list_checkpoints(run_dir)]
    return out, ("best" if best is not None else "latest" if latest is not None else None)


def zip_package(package: Path) -> Path:
    """``package`` as ``<package>.zip`` beside it (its folder at the zip's top level), written atomically."""
    package = Path(package)
    fd, tmp = tempfile.mkstemp(prefix=f".{package.name}.", suffix=".zip.tmp", dir=package.parent)
    os.close(fd)
    try:
        made = shutil.make_archive(tmp[: -len(".zip")], "zip", root_dir=package.parent, base_dir=package.name)
        final = package.with_name(package.name + ".zip")
        os.replace(made, final)
        return final
    finally:
        for leftover in (Path(tmp), Path(tmp[: -len(".zip")] + ".zip")):
            if leftover.exists():
                leftover.unlink()


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _summary(ws: Workspace, package: Path, archive: Path) -> str:
    manifest = json.loads((package / MANIFEST).read_text())
    files = sorted(p for p in package.rglob("*") if p.is_file())
    listing = "".join(
        f"<li><code>{html.escape(str(p.relative_to(package)))}</code> {_size(p.stat().st_size)}</li>"
        for p in files
    )
    warn = (
        message(
            "warn", "the base was an UNTRAINED tiny test model: this package cannot produce usable speech"
        )
        if manifest.get("untrained_base")
        else ""
    )
    return (
        f"{warn}<div class='vt-msg vt-msg-ok' id='vt-export-done'>package "
        f"{html.escape(ws.relative(package))} ({manifest.get('backend')}, {manifest.get('checkpoint')}, "
        f"{manifest.get('steps')} steps); zip {_size(archive.stat().st_size)}</div><ul "
        f"class='vt-files'>{listing}</ul>"
    )


def build(ws: Workspace) -> dict[str, Any]:
    with gr.Row():
        run = gr.Dropdown(label="run", choices=[], elem_id="vt-export-run")
        checkpoint = gr.Dropdown(label="checkpoint", choices=[], elem_id="vt-export-checkpoint")
        name = gr.Textbox(label="package name (a folder under exports/)", elem_id="vt-export-name")
    build_btn = gr.Button("Build package", variant="primary", elem_id="vt-export-build")
    status = gr.HTML(elem_id="vt-export-status")
    download = gr.DownloadButton("Download zip", visible=False, elem_id="vt-export-download")
    with gr.Accordion("Model card (README.md of the package)", open=False):
        card = gr.Markdown(elem_id="vt-export-card")

    def on_run(name_: str | None) -> tuple[Any, Any]:
        if not name_:
            return gr.update(choices=[], value=None), ""
        try:
            choices, default = checkpoint_choices(ws.run_dir(name_))
        except UiSafetyError:
            return gr.update(choices=[], value=None), ""
        return gr.update(choices=choices, value=default), f"{name_}-{default or 'latest'}"

    run.change(on_run, run, [checkpoint, name])
    checkpoint.change(lambda r, c: f"{r}-{c}" if r and c else gr.skip(), [run, checkpoint], name)

    def build_package(name_: str | None, ckpt: str | None, pkg_name: str) -> tuple[str, Any, str]:
        from voicetune.packaging import export

        try:
            if not name_ or not ckpt:
                raise UiSafetyError("choose a run and a checkpoint (training writes one at its end)")
            run_dir = ws.run_dir(name_)
            out = ws.new_child("exports", pkg_name, "package name")
            if out.exists() and not (out / MANIFEST).is_file():
                raise UiSafetyError(
                    f"exports/{pkg_name} exists and is not a voicetune package; choose another name"
                )
            t0 = time.time()
            export(run_dir, out, checkpoint=ckpt)
            archive = zip_package(out)
        except (UiSafetyError, ValueError, OSError, RuntimeError) as e:
            return message("error", str(e)), gr.update(visible=False), ""
        readme = out / "README.md"
        return (_summary(ws, out, archive) + message("info", f"built in {time.time() - t0:.1f} s"),
                gr.update(value=str(archive), visible=True, label=f"Download {archive.name}"),
                readme.read_text() if readme.is_file() else "")

    build_btn.click(build_package, [run, checkpoint, name], [status, download, card], concurrency_limit=1)

    def on_load(current: str | None) -> Any:
        return choices_update(ws.runs(), current)

    return {"run": run, "on_load": on_load, "show": (on_run, run, [checkpoint, name])}
