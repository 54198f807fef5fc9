"""The installed packages must equal requirements.lock: a machine that kept old packages fails here."""

from __future__ import annotations

from pathlib import Path

from voicetune.utils.lockcheck import compare, installed_versions, locked_versions

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"


def test_installed_packages_equal_the_lock():
    diff = compare(LOCK)
    assert diff.ok, (
        f"installed packages drifted from {LOCK.name} (run `make clean-venv setup`):\n{diff.describe()}"
    )


def test_the_lock_pins_the_packages_that_broke_before():
    pins = locked_versions(LOCK)
    for name in ("torch", "transformers", "coqui-tts", "faster-whisper", "numpy", "peft"):
        assert name in pins, f"{name} is not pinned in {LOCK.name}"
    major, minor = (int(x) for x in pins["transformers"].split(".")[:2])
    assert (major, minor) < (5, 24), "transformers 5.24 breaks coqui-tts's XTTS inference"


def test_drift_is_reported_package_by_package():
    installed = dict(installed_versions())
    installed["transformers"] = "5.24.0"  # what a fresh resolve picked the week it broke
    installed.pop("jiwer")
    installed["left-over-package"] = "1.0"
    diff = compare(LOCK, installed)
    assert not diff.ok
    assert diff.wrong["transformers"][1] == "5.24.0"
    assert "jiwer" in diff.missing
    assert diff.extra == {"left-over-package": "1.0"}
    text = diff.describe()
    assert "transformers: locked" in text and "installed 5.24.0" in text


def test_markers_select_one_version_per_interpreter(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "numpy==1.0 ; python_full_version < '3.0' \\\n    --hash=sha256:00\n"
        "numpy==2.0 ; python_full_version >= '3.0' \\\n    --hash=sha256:00\n    # via x\n"
        "six==1.16.0 \\\n    --hash=sha256:00\n"
    )
    assert locked_versions(lock) == {"numpy": "2.0", "six": "1.16.0"}
