"""`voicetune ui`: a local web UI (Gradio) over the library: dataset review, training with live curves, A/B
listening and export.

The UI is a thin caller: every stage is the library's own function (training runs ``voicetune train`` in a
process of its own), progress comes through the library's callbacks, and what a page shows is read from the
workspace's files. Importing this package does not import Gradio; :func:`launch` does.

Modules: ``app`` (the Blocks and the launch), one per tab (``tab_dataset``, ``tab_train``, ``tab_evaluate``,
``tab_export``), and the plain logic they use, without Gradio: ``safety`` (paths, names, uploads, bind
address), ``workspace``, ``forms`` (forms from the config dataclasses), ``clips`` (the review table),
``process`` (the training process), ``runview`` (a run from its folder), ``evals`` (a run's evaluations).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def launch(workspace: Path | str = "voicetune_workspace", host: str = "127.0.0.1", port: int = 7860,
           auth: str | None = None, allow_remote: bool = False, max_upload_mb: float = 2048.0,
           block: bool = True, quiet: bool = False) -> Any:
    """Start the web UI (see :func:`voicetune.ui.app.launch`)."""
    from voicetune.ui.app import launch as _launch

    return _launch(workspace, host=host, port=port, auth=auth, allow_remote=allow_remote,
                   max_upload_mb=max_upload_mb, block=block, quiet=quiet)
