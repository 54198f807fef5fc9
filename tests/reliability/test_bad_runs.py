"""Damaged or tampered run folders, checkpoints and packages given to `train --resume`, `export` and
`synthesize`: each refused naming the file and the reason, the folder left as it was, nothing half-written
left behind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from voicetune.run import latest_checkpoint

from .helpers import assert_nothing_partial, assert_reported, assert_unchanged, cli, digest, leftovers


def _latest_climbs_out(run):
    (run / "checkpoints" / "latest").write_text("../../../../etc\n")


def _state_truncated(run):
    path = run / "checkpoints" / "step_2" / "state.pt"
    path.write_bytes(path.read_bytes()[:1000])


def _state_of_an_older_voicetune(run):
    """state.pt as voicetune wrote it before: NumPy's RNG state pickled as an ndarray."""
    path = run / "checkpoints" / "step_2" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()
    state.pop("format", None)
    torch.save(state, path)


def _config_yaml_broken(run):
    (run / "config.yaml").write_text("lr: [unclosed\n")


def _state_not_a_state(run):
    torch.save({"hello": torch.zeros(1)}, run / "checkpoints" / "step_2" / "state.pt")


RESUME_CASES = {
    "latest_marker_climbs_out": (
        _latest_climbs_out,
        r"checkpoints/latest:1: '\.\./\.\./\.\./\.\./etc' is not a checkpoint name of this run",
    ),
    "state_pt_truncated": (
        _state_truncated,
        r"step_2/state\.pt: unreadable .*resume from an earlier checkpoint",
    ),
    "state_pt_of_an_older_voicetune": (
        _state_of_an_older_voicetune,
        (r"step_2/state\.pt holds Python objects that voicetune does not unpickle.*older voicetune"
         r".*voicetune export"),
    ),
    "state_pt_not_a_training_state": (
        _state_not_a_state,
        r"step_2/state\.pt: not a voicetune training state",
    ),
    "config_yaml_broken": (_config_yaml_broken, r"cannot read config .*config\.yaml"),
}


@pytest.mark.parametrize("kind", sorted(RESUME_CASES))
def test_a_damaged_run_folder_is_refused_on_resume_naming_the_file(kind, run_copy):
    damage, expected = RESUME_CASES[kind]
    run = run_copy()
    damage(run)
    before = digest(run)
    outcome = cli("train", "--resume", run, "--max-steps", "3")
    assert outcome.rc == 1
    assert_reported(outcome, expected)  # 1.
    # 3. (2: a run cannot go on from a checkpoint it cannot trust)
    assert_unchanged(before, run, logs=("train.log",))
    assert not (run / "checkpoints" / "step_3").exists() and not leftovers(run / "checkpoints")  # 4.


def test_resume_of_a_run_stopped_before_its_first_checkpoint_says_to_start_again(
    run_copy, tiny_dataset, tiny_base
):
    run = run_copy()
    for name in ("checkpoints", "config.yaml", "run.json", "metrics.jsonl", "tensorboard"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    before = digest(run)
    outcome = cli("train", "--resume", run)
    assert outcome.rc == 1
    assert_reported(
        outcome,
        r"no checkpoint exists yet.*nothing to resume.*start it again with the same command: "
        rf"voicetune train {tiny_dataset} --base {tiny_base} --out {run}",
    )
    assert_unchanged(before, run, logs=("train.log",))
    outcome = cli(
        "train",
        tiny_dataset,
        "--base",
        tiny_base,
        "--out",
        run,
        "--max-steps",
        "1",
        "--eval-every-epochs",
        "0",
    )  # the advice works: the same command starts it again
    assert outcome.rc == 0, outcome.text[-3000:]
    assert latest_checkpoint(run).name == "step_1"


EXPORT_CASES = {
    "best_marker_climbs_out": (
        lambda run: (run / "checkpoints" / "best").write_text("../../secret\n"),
        ["--checkpoint", "best"],
        r"checkpoints/best:1: '\.\./\.\./secret' is not a checkpoint name",
    ),
    "checkpoint_option_climbs_out": (
        lambda run: None,
        ["--checkpoint", "../../../etc"],
        r"--checkpoint '\.\./\.\./\.\./etc': give 'auto', 'latest', 'best' or a checkpoint folder",
    ),
    "trainable_pt_garbage": (
        lambda run: (run / "checkpoints" / "step_2" / "trainable.pt").write_bytes(b"PK\x03\x04 no"),
        [],
        r"step_2/trainable\.pt: cannot load the trained XTTS GPT state",
    ),
    "meta_json_garbage": (
        lambda run: (run / "checkpoints" / "step_2" / "meta.json").write_text("{not json"),
        ["--checkpoint", "step_2"],
        r"step_2/meta\.json: unreadable",
    ),
    "run_json_missing": (
        lambda run: (run / "run.json").unlink(),
        [],
        r"run\.json: missing; is .* a folder written by `voicetune train`",
    ),
}


@pytest.mark.parametrize("kind", sorted(EXPORT_CASES))
def test_a_damaged_run_is_refused_on_export_naming_the_file(kind, run_copy, tmp_path):
    damage, args, expected = EXPORT_CASES[kind]
    run = run_copy()
    damage(run)
    before = digest(run)
    pkg = tmp_path / "pkg"
    outcome = cli("export", run, "--out", pkg, *args)
    assert outcome.rc == 1
    assert_reported(outcome, expected)
    assert_unchanged(before, run)
    assert_nothing_partial(pkg, "package")


def test_a_package_whose_references_climb_out_is_refused_by_synthesize(run_copy, tmp_path):
    run, pkg = run_copy(), tmp_path / "pkg"
    assert cli("export", run, "--out", pkg).rc == 0
    secret = tmp_path / "secret.wav"
    shutil.copyfile(next((pkg / "reference").iterdir()), secret)
    manifest = json.loads((pkg / "voicetune.json").read_text())
    manifest["references"] = ["../secret.wav"]
    (pkg / "voicetune.json").write_text(json.dumps(manifest))
    before = digest(pkg, secret)
    outcome = cli("synthesize", pkg, "--text", "Hello there.", "--out", tmp_path / "hello.wav")
    assert outcome.rc == 1
    assert_reported(
        outcome,
        r"voicetune\.json \(references\): '\.\./secret\.wav' goes up out of the folder.*"
        r"--reference",
    )
    assert_unchanged(before, pkg, secret)
    assert not (tmp_path / "hello.wav").exists()
