"""`--out` never costs a user a file: a non-empty folder voicetune did not write is refused (or, with --force,
the output is added next to its files, which are kept); inputs and the run itself are never written over; a
re-run replaces only voicetune's own earlier output. `export` packages the best checkpoint when the run marked
one."""

from __future__ import annotations

import json
import os

import pytest

from voicetune.run import set_best

from .helpers import assert_nothing_partial, assert_reported, assert_unchanged, cli, digest, leftovers


def _users_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("two years of work\n")
    (path / "README.md").write_text("my notes: not voicetune's model card\n")
    (path / "photos").mkdir()
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    return path


def test_export_refuses_a_non_empty_folder_it_did_not_write(run_copy, tmp_path):
    run, out = run_copy(), _users_folder(tmp_path / "mine")
    before = digest(out, run)
    outcome = cli("export", run, "--out", out)
    assert outcome.rc == 1
    assert_reported(
        outcome,
        r"--out .*mine is not empty \(README\.md, photos, thesis\.tex\) and was not written by "
        r"`voicetune export`.*--force",
    )
    assert_unchanged(before, out, run)
    assert_nothing_partial(out, "package", existed_before=True)


def test_export_with_force_adds_the_package_and_keeps_every_file_of_the_user(run_copy, tmp_path):
    run, out = run_copy(), _users_folder(tmp_path / "mine")
    (out / "README.md").unlink()  # the package's model card would take this name: no clash in this folder
    before = digest(out / "thesis.tex", out / "photos")
    outcome = cli("export", run, "--out", out, "--force")
    assert outcome.rc == 0, outcome.text[-3000:]
    assert_unchanged(before, out / "thesis.tex", out / "photos")
    assert (out / "voicetune.json").is_file() and (out / "model.pth").is_file() and not leftovers(out)
    # a second export replaces its own package, still keeping the user's files
    assert cli("export", run, "--out", out, "--checkpoint", "step_1").rc == 0
    assert json.loads((out / "voicetune.json").read_text())["checkpoint"] == "step_1"
    assert_unchanged(before, out / "thesis.tex", out / "photos")


def test_export_with_force_never_replaces_a_file_of_the_user_with_its_own(run_copy, tmp_path):
    run, out = run_copy(), _users_folder(tmp_path / "mine")
    before = digest(out)
    outcome = cli("export", run, "--out", out, "--force")
    assert outcome.rc == 1
    assert_reported(outcome, r"already holds README\.md, which voicetune did not write.*not replaced")
    assert_unchanged(before, out)
    assert not leftovers(out)


@pytest.mark.parametrize("where", ["the run", "the folder holding the run", "the dataset", "the base"])
def test_export_never_writes_over_its_inputs_not_even_with_force(
    where, run_copy, tiny_dataset, tiny_base, tmp_path
):
    run = run_copy()
    out = {
        "the run": run,
        "the folder holding the run": run.parent,
        "the dataset": tiny_dataset,
        "the base": tiny_base,
    }[where]
    before = digest(run, tiny_dataset, tiny_base)
    outcome = cli("export", run, "--out", out, "--force")
    assert outcome.rc == 1
    assert_reported(outcome, r"(is|contains) an input of this command.*not even with --force")
    assert_unchanged(before, run, tiny_dataset, tiny_base)


def test_export_replaces_its_own_earlier_package_atomically(run_copy, tmp_path):
    run, out = run_copy(), tmp_path / "pkg"
    assert cli("export", run, "--out", out, "--checkpoint", "step_1").rc == 0
    assert cli("export", run, "--out", out, "--checkpoint", "step_2").rc == 0
    assert json.loads((out / "voicetune.json").read_text())["checkpoint"] == "step_2"
    assert json.loads((out / ".voicetune-output.json").read_text())["outputs"]["package"]["entries"]
    assert not leftovers(out)


def test_export_packages_the_best_checkpoint_and_says_which(run_copy, tmp_path):
    run = run_copy()
    set_best(
        run, run / "checkpoints" / "step_1"
    )  # the in-loop evaluation found step 1 best; step 2 is the latest
    outcome = cli("export", run, "--out", tmp_path / "pkg")
    assert outcome.rc == 0, outcome.text[-3000:]
    assert_reported(outcome, r"packaged checkpoint step_1 \(the best evaluation of the run, step 1\)")
    manifest = json.loads((tmp_path / "pkg" / "voicetune.json").read_text())
    assert manifest["checkpoint"] == "step_1" and manifest["steps"] == 1
    assert "checkpoint step_1, the best evaluation of the run" in (tmp_path / "pkg" / "README.md").read_text()
    outcome = cli("export", run, "--out", tmp_path / "pkg2", "--checkpoint", "latest")
    assert_reported(outcome, r"packaged checkpoint step_2 \(the latest checkpoint, step 2\)")


def test_export_without_a_best_packages_the_latest_and_says_so(run_copy, tmp_path):
    outcome = cli("export", run_copy(), "--out", tmp_path / "pkg")
    assert outcome.rc == 0
    assert_reported(
        outcome,
        r"packaged checkpoint step_2 \(the latest checkpoint \(the run marked no best "
        r"evaluation\), step 2\)",
    )


def test_evaluate_base_refuses_a_non_empty_folder_before_evaluating(tiny_dataset, tiny_base, tmp_path):
    out = _users_folder(tmp_path / "mine")
    before = digest(out)
    outcome = cli(
        "evaluate",
        "--base",
        tiny_base,
        "--dataset",
        tiny_dataset,
        "--out",
        out,
        "--max-sentences",
        "1",
        "--probes",
        "0",
    )
    assert outcome.rc == 1
    assert_reported(outcome, r"not written by `voicetune evaluate --base`")
    assert_unchanged(before, out)
    outcome = cli("evaluate", "--base", tiny_base, "--dataset", tiny_dataset, "--out", tiny_dataset)
    assert_reported(outcome, r"is an input of this command")


def test_make_tiny_base_refuses_a_folder_with_the_users_config_json(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}\n')
    before = digest(out)
    outcome = cli("make-tiny-base", "--out", out)
    assert outcome.rc == 1
    assert_reported(outcome, r"not written by `voicetune make-tiny-base`")
    assert_unchanged(before, out)


def test_train_refuses_a_non_empty_folder_that_is_not_a_run(tiny_dataset, tiny_base, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: own settings\n")
    before = digest(out)
    outcome = cli(
        "train",
        tiny_dataset,
        "--base",
        tiny_base,
        "--out",
        out,
        "--max-steps",
        "1",
        "--eval-every-epochs",
        "0",
    )
    assert outcome.rc == 1
    assert_reported(
        outcome, r"--out .*mine is not empty \(config\.yaml\) and is not a run folder of voicetune"
    )
    assert_unchanged(before, out)


def test_synthesize_does_not_replace_an_existing_file_without_force(run_copy, tmp_path):
    pkg = tmp_path / "pkg"
    assert cli("export", run_copy(), "--out", pkg).rc == 0
    wav = tmp_path / "hello.wav"
    wav.write_bytes(b"the user's own recording")
    before = digest(wav)
    outcome = cli("synthesize", pkg, "--text", "Hi.", "--out", wav)
    assert outcome.rc == 1
    assert_reported(outcome, r"--out .*hello\.wav already exists.*--force")
    assert_unchanged(before, wav)
    ref = next((pkg / "reference").iterdir())
    outcome = cli("synthesize", pkg, "--text", "Hi.", "--out", ref, "--force")
    assert_reported(outcome, r"is a folder, a reference clip or a file of the package")
    assert os.path.getsize(ref) > 1000
