"""Imports run downhill: no module imports one that sits higher in the pipeline order.

The order (highest first), read from every module's own imports (``ast``, function-level and ``TYPE_CHECKING``
imports included, and ``importlib.import_module("voicetune...")`` with a literal name)::

    8  cli, ui                       entry points: arguments / widgets -> library calls
    7  finetune, packaging,          stages built on everything below (train with in-loop evaluation,
       synthesis, preflight,         export, synthesis, doctor (stackcheck), the demo, the model card)
       stackcheck, modelcard
       demo_pipeline, demo_audio
    6  evaluation                    probe-set evaluation, selection, report, re-scoring
    5  training                      the loop, step engine, optimizers, resume, autotune
    4  backends                      the Backend contract, its registry, XTTS (and later CSM, Tortoise)
    3  data                          prepare: VAD, segmentation, ASR, quality checks, manifests
    2  scoring                       scorers shared by data QA and evaluation (speaker encoder, MOS, WER)
    1  audio, config, run            decoding/resampling; typed configs; the run folder's layout
    0  utils                         io, device, logging, flat buffers

A module may import its own rank or lower. A new top-level module or package must be given a rank here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "voicetune"

RANKS: dict[str, int] = {
    "utils": 0,
    "audio": 1, "config": 1, "run": 1,
    "scoring": 2,
    "data": 3,
    "backends": 4,
    "training": 5,
    "evaluation": 6,
    "finetune": 7, "packaging": 7, "synthesis": 7, "preflight": 7, "demo_pipeline": 7, "demo_audio": 7,
    "stackcheck": 7, "modelcard": 7,
    "cli": 8, "ui": 8,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _rank(module: str) -> int | None:
    """The rank of ``voicetune.<top>...``; None for the package root (its lazy API table names every
    stage)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] not in RANKS:
        raise AssertionError(f"{module}: give voicetune.{parts[1]} a rank in tests/test_import_order.py")
    return RANKS[parts[1]]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported voicetune module) of every import in the file, wherever it is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            # `from voicetune import config` imports the submodule voicetune.config
            if base == "voicetune":
                found += [(node.lineno, f"voicetune.{a.name}") for a in node.names
                          if (SRC / f"{a.name}.py").is_file() or (SRC / a.name).is_dir()]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return sorted((line, name) for line,
                  name in found if name == "voicetune" or name.startswith("voicetune."))


def upward_imports() -> list[str]:
    """Every import that runs up the order, as 'module:line -> imported (rank a -> rank b)'."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        own = _rank(module)
        if own is None:
            continue
        for line, target in _imports(path):
            theirs = _rank(target)
            if theirs is not None and theirs > own:
                out.append(f"{module}:{line} -> {target} (rank {own} -> {theirs})")
    return out


def test_every_import_runs_downhill():
    upward = upward_imports()
    assert not upward, "imports running up the pipeline order:\n" + "\n".join(upward)


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    """The reader itself: an import inside a function and a relative import are both found."""
    pkg = tmp_path / "voicetune" / "data"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from voicetune.evaluation import metrics\n"
                              "from ..training import loop\n")
    global SRC
    saved, SRC = SRC, tmp_path / "voicetune"
    try:
        assert [name for _, name in _imports(pkg / "x.py")] == ["voicetune.evaluation", "voicetune.training"]
        assert len(upward_imports()) == 2
    finally:
        SRC = saved
