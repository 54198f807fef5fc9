"""The public API: every stage is a callable at the package top level, before and after its modules load."""

import importlib

import voicetune

STAGES = ["prepare", "make_tiny_base", "train", "evaluate", "export", "synthesize", "doctor", "check_stack",
          "demo"]


def test_stage_functions_stay_callable_after_every_module_is_imported():
    for name in STAGES:
        target = voicetune._API[name]
        importlib.import_module(target.split(":")[0])  # a submodule import must not shadow the function
    for name in STAGES:
        assert callable(getattr(voicetune, name)), f"voicetune.{name} is not callable"
    assert voicetune.train.__module__ == "voicetune.finetune"  # the loop with in-loop evaluation
    assert voicetune.evaluate.__module__.startswith("voicetune.evaluation")


def test_importing_voicetune_is_light():
    import subprocess
    import sys

    code = (
        "import sys, voicetune; "
        "print(sorted(m for m in ('torch', 'TTS', 'faster_whisper') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
