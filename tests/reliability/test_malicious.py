"""Nothing is unpickled: a file whose pickle would run code (here: create a marker file) is refused by every
loader that reads user-supplied files, naming the file, and the marker never appears.

Loaders covered: a run's state.pt (resume) and trainable.pt (export, resume), every .pth of a base folder
(model, DVAE, mel statistics, speakers: train), an exported package's model.pth (synthesize), a run's cached
features (resume recomputes them), prepare's cached VAD analysis (np.load without pickles: recomputed), and a
YAML config with a Python tag (safe_load). coqui-tts's own loaders are not reached: voicetune reads every
base-folder file itself with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import assert_reported, assert_unchanged, cli, digest, linked_copy


class Payload:
    """Unpickling this opens (creates) ``marker``: the observable stand-in for running any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path, like: object = None) -> None:
    """Replace ``path`` with a torch file whose pickle holds the payload (inside a plausible structure)."""
    path.unlink(missing_ok=True)
    obj = {"model": {"gpt.evil": Payload(marker)}} if like is None else like
    torch.save(obj, path)


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a pickle ran code"


def test_payload_really_runs_code_when_unpickled(tmp_path):
    """The payload is live: an unsafe load would create the marker (so the tests below can fail)."""
    m = tmp_path / "marker"
    torch.save({"x": Payload(m)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert m.exists()


def test_resume_refuses_a_state_pt_that_would_run_code(run_copy, marker):
    run = run_copy()
    _plant(run / "checkpoints" / "step_2" / "state.pt", marker, {"step": 2, "optimizer": Payload(marker)})
    outcome = cli("train", "--resume", run, "--max-steps", "3")
    assert outcome.rc == 1
    assert_reported(outcome, r"step_2/state\.pt holds Python objects that voicetune does not unpickle")


@pytest.mark.parametrize("command", ["export", "resume"])
def test_a_trainable_pt_that_would_run_code_is_refused(command, run_copy, marker, tmp_path):
    run = run_copy()
    _plant(run / "checkpoints" / "step_2" / "trainable.pt", marker)
    args = (
        ["export", run, "--out", tmp_path / "pkg"]
        if command == "export"
        else ["train", "--resume", run, "--max-steps", "3"]
    )
    outcome = cli(*args)
    assert outcome.rc == 1
    assert_reported(outcome, r"step_2/trainable\.pt: not a voicetune weights file \(it holds Python objects")


@pytest.mark.parametrize("name", ["model.pth", "dvae.pth", "mel_stats.pth", "speakers_xtts.pth"])
def test_a_base_folder_file_that_would_run_code_is_refused(name, tiny_base, tiny_dataset, marker, tmp_path):
    base = linked_copy(tiny_base, tmp_path / "base")
    _plant(base / name, marker)
    before = digest(base)
    outcome = cli(
        "train",
        tiny_dataset,
        "--base",
        base,
        "--out",
        tmp_path / "run",
        "--max-steps",
        "1",
        "--eval-every-epochs",
        "0",
    )
    assert outcome.rc == 1
    assert_reported(outcome, rf"{name}: cannot load")
    assert_unchanged(before, base)


def test_a_package_model_that_would_run_code_is_refused_by_synthesize(run_copy, marker, tmp_path):
    pkg = tmp_path / "pkg"
    assert cli("export", run_copy(), "--out", pkg).rc == 0
    _plant(pkg / "model.pth", marker)
    outcome = cli("synthesize", pkg, "--text", "Hello.", "--out", tmp_path / "hi.wav")
    assert outcome.rc == 1
    assert_reported(outcome, r"model\.pth: cannot load the XTTS checkpoint")


def test_cached_features_that_would_run_code_are_recomputed_not_loaded(run_copy, marker):
    run = run_copy()
    feats = sorted((run / "features").rglob("*.pt"))
    assert feats
    for f in feats:
        _plant(f, marker, {"version": Payload(marker)})
    outcome = cli("train", "--resume", run, "--max-steps", "3")
    assert outcome.rc == 0, outcome.text[-3000:]
    assert_reported(outcome, r"feature cache file .* is unreadable or not voicetune's.*recomputing it")


def test_a_cached_vad_analysis_holding_a_pickle_is_ignored(piper_sentences, asr_model, marker, tmp_path):
    from voicetune.data.cache import CACHE_DIR
    from voicetune.data.prepare import prepare

    src, out = tmp_path / "rec", tmp_path / "ds"
    src.mkdir()
    shutil.copyfile(piper_sentences[0][0], src / "a.wav")
    shutil.copyfile(piper_sentences[1][0], src / "b.wav")
    prepare(src, out, asr_model=asr_model, qa_mos="off", min_eval_clips=0)
    for npz in (out / CACHE_DIR / "analysis").glob("*.npz"):
        npz.unlink()
        np.savez(npz, version=np.array([Payload(marker)], dtype=object))
    result = prepare(src, out, asr_model=asr_model, qa_mos="off", min_eval_clips=0)
    assert result.n_files_decoded == 2 and result.n_kept == 2  # analysed again, not unpickled


def test_a_yaml_config_with_a_python_tag_is_refused(tiny_dataset, tiny_base, marker, tmp_path):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"lr: 0.001\nhook: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    before = digest(cfg)
    outcome = cli("train", tiny_dataset, "--base", tiny_base, "--out", tmp_path / "run", "--config", cfg)
    assert outcome.rc == 1
    assert_reported(outcome, r"cannot read config .*evil\.yaml.*python/object")
    assert_unchanged(before, cfg)
