"""`kill -9` trials: prepare, train (during steps, during checkpoint writes, during a resume) and export are
killed at sampled moments; the re-run (or ``--resume``) must complete with exactly the result of an
uninterrupted run.

Every trial draws its kill moment from its own seed. The seeds are printed (and put in every assertion
message); replay one with ``VOICETUNE_KILL_SEED=<seed> pytest tests/reliability/test_kill.py -k <trial>``.
Without that variable the base seed is drawn at random, so repeated runs explore new moments.

The killed command is the real one (``python -m voicetune.cli ...`` in a new process: a forked copy of the
test process would deadlock on the thread pools and locks it inherits). The kill moment is counted from an
event the command shows on disk (its run folder appears, a checkpoint folder is being written, its output
folder is being built), so that the time it spends importing does not blur the sample. The re-runs that must
complete run in the test process.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from voicetune.data.manifest import read_clips_jsonl
from voicetune.run import latest_checkpoint, list_checkpoints
from voicetune.training.errors import TrainError

from .conftest import TRAIN
from .helpers import SRC, leftovers

BASE_SEED = int(os.environ.get("VOICETUNE_KILL_SEED") or random.SystemRandom().randrange(1, 10**6))
STEPS = 6
TOLERANCE = 1e-6


def trial_seeds(name: str, n: int) -> list[int]:
    """``n`` seeds for the trials of ``name`` (the replay seed alone when VOICETUNE_KILL_SEED is set)."""
    if os.environ.get("VOICETUNE_KILL_SEED"):
        return [BASE_SEED]
    rng = random.Random(f"{BASE_SEED}:{name}")
    return [rng.randrange(1, 10**6) for _ in range(n)]


def kill_cli(
    args: list[object], trigger: Callable[[], bool], delay: float, limit: float = 600
) -> tuple[bool, str]:
    """Run ``voicetune ARGS`` and SIGKILL it ``delay`` seconds after ``trigger()`` first holds. Returns
    (killed: False when it finished first, what happened)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voicetune.cli", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t0, fired = time.monotonic(), None
    try:
        while proc.poll() is None and time.monotonic() - t0 < limit:
            now = time.monotonic()
            if fired is None and trigger():
                fired = now
            if fired is not None and now >= fired + delay:
                proc.kill()
                proc.wait()
                return True, f"killed {now - fired:.3f} s after the trigger ({now - t0:.1f} s after start)"
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"voicetune {args[0]} failed before it could be killed ({proc.returncode})"
    return False, f"finished first ({time.monotonic() - t0:.1f} s)"


def exists(path: Path) -> Callable[[], bool]:
    return lambda: path.exists()


def new_file_in(folder: Path) -> Callable[[], bool]:
    before = set(os.listdir(folder))
    return lambda: bool(set(os.listdir(folder)) - before)


def building(folder: Path, prefix: str) -> Callable[[], bool]:
    """A hidden folder ``PREFIX*.tmp`` under construction appears in ``folder``."""

    def seen() -> bool:
        try:
            return any(p.name.startswith(prefix) and p.name.endswith(".tmp") for p in folder.iterdir())
        except FileNotFoundError:
            return False

    return seen


# ------------------------------------------------------------------------------------------------------ train


@pytest.fixture(scope="module")
def reference(tiny_dataset, tiny_base, tmp_path_factory):
    """An uninterrupted run of STEPS steps (a checkpoint after each) and how long it took."""
    from voicetune.training.loop import train

    run = tmp_path_factory.mktemp("kill_reference") / "run"
    t0 = time.monotonic()
    train(tiny_dataset, tiny_base, run, max_steps=STEPS, save_every=1, **TRAIN)
    return run, time.monotonic() - t0


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _assert_sound_checkpoints(run: Path, why: str) -> None:
    """``latest`` names a complete checkpoint whose files all load (without unpickling anything)."""
    latest = latest_checkpoint(run)
    if latest is None:
        return
    assert latest == list_checkpoints(run)[-1], why
    torch.load(latest / "trainable.pt", weights_only=True)
    state = torch.load(latest / "state.pt", weights_only=True)
    assert state["step"] == int(latest.name.split("_")[1]), why
    json.loads((latest / "meta.json").read_text())


def _finish_and_compare(run: Path, reference_run: Path, dataset: Path, base: Path, why: str) -> None:
    """Resume (or, with no checkpoint yet, start again as the message says) and compare with the reference."""
    from voicetune.training.loop import train

    try:
        train(resume=run, max_steps=STEPS, save_every=1)
    except TrainError as e:
        assert "no checkpoint exists yet" in str(e), (why, str(e))
        train(dataset, base, run, max_steps=STEPS, save_every=1, **TRAIN)
    got, want = _metrics(run), _metrics(reference_run)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1)), (
        why,
        [r["step"] for r in got],
    )  # no duplicates
    for a, b in zip(got, want):
        for key in ("loss", "text_ce", "mel_ce", "grad_norm", "lr"):
            assert abs(a[key] - b[key]) <= TOLERANCE * max(1.0, abs(b[key])), (
                why,
                a["step"],
                key,
                a[key],
                b[key],
            )
    final = f"step_{STEPS}"
    ours = torch.load(run / "checkpoints" / final / "trainable.pt", weights_only=True)
    theirs = torch.load(reference_run / "checkpoints" / final / "trainable.pt", weights_only=True)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), why
    assert not leftovers(run / "checkpoints"), (why, leftovers(run / "checkpoints"))


def _train_cli(dataset: Path, base: Path, run: Path) -> list[object]:
    return [
        "train",
        dataset,
        "--base",
        base,
        "--out",
        run,
        "--max-steps",
        STEPS,
        "--save-every",
        1,
        *(f"--{k.replace('_', '-')}={v}" for k, v in TRAIN.items()),
    ]


def _train_trial(seed: int, mode: str, reference, dataset: Path, base: Path, tmp: Path) -> None:
    """``mode``: "anytime" (a moment of the whole run), "checkpoint_write" (while a checkpoint folder is being
    written), "resume" (a moment of a --resume that continues a finished first part)."""
    from voicetune.training.loop import train

    ref_run, ref_seconds = reference
    rng = random.Random(seed)
    run = tmp / f"run_{mode}_{seed}"
    if mode == "resume":
        train(dataset, base, run, max_steps=3, save_every=1, **TRAIN)
        args: list[object] = ["train", "--resume", run, "--max-steps", STEPS, "--save-every", 1]
        if rng.random() < 0.25:  # while it loads and restores the checkpoint
            trigger, delay = (lambda: True), rng.uniform(0.0, 6.0)
        else:  # from its first step on (its TensorBoard writer opens a new event file)
            trigger, delay = new_file_in(run / "tensorboard"), rng.uniform(0.0, 0.6 * ref_seconds)
    elif mode == "checkpoint_write":
        args, trigger, delay = (
            _train_cli(dataset, base, run),
            building(run / "checkpoints", ".step_"),
            rng.uniform(0.0, 0.04),
        )
    else:  # from the moment the run folder appears (before the model is loaded) to past the end
        args, trigger = _train_cli(dataset, base, run), exists(run)
        delay = rng.uniform(0.0, 2.0 + 1.5 * ref_seconds)
    _, what = kill_cli(args, trigger, delay)
    why = f"kill trial train/{mode} seed={seed}: {what} (replay: VOICETUNE_KILL_SEED={seed})"
    print(why)
    _assert_sound_checkpoints(run, why)
    _finish_and_compare(run, ref_run, dataset, base, why)


@pytest.mark.parametrize("seed", trial_seeds("train-fast", 1))
def test_train_killed_during_a_checkpoint_write_resumes_to_the_same_losses(
    seed, reference, tiny_dataset, tiny_base, tmp_path
):
    _train_trial(seed, "checkpoint_write", reference, tiny_dataset, tiny_base, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,seed",
    [("anytime", s) for s in trial_seeds("train", 8)]
    + [("checkpoint_write", s) for s in trial_seeds("train-write", 5)]
    + [("resume", s) for s in trial_seeds("resume", 4)],
)
def test_train_kill_trials(mode, seed, reference, tiny_dataset, tiny_base, tmp_path):
    _train_trial(seed, mode, reference, tiny_dataset, tiny_base, tmp_path)


# ---------------------------------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def prepare_reference(piper_sentences, asr_model, tmp_path_factory):
    """The recordings, and the clips of an uninterrupted prepare of them (and how long it took)."""
    import shutil

    from voicetune.data.prepare import prepare

    root = tmp_path_factory.mktemp("kill_prepare")
    src = root / "recordings"
    src.mkdir()
    for path, _ in piper_sentences:
        shutil.copyfile(path, src / path.name)
    prepare(
        src, root / "warm", asr_model=asr_model, qa_mos="off"
    )  # models loaded: the timing below is the work
    t0 = time.monotonic()
    prepare(src, root / "reference", asr_model=asr_model, qa_mos="off")
    return src, root / "reference", time.monotonic() - t0


def _clips(out: Path) -> list[tuple]:
    return sorted(
        (r.id, r.source_file, r.start, r.end, r.status, r.split, r.text)
        for r in read_clips_jsonl(out / "clips.jsonl")
    )


def _prepare_trial(seed: int, prepare_reference, asr_model: str, tmp: Path) -> None:
    """Killed at a moment from the start of its work (the output folder appears, after the models loaded) to
    past the end; the same command again must give the clips of an uninterrupted run and clean what the kill
    left."""
    from voicetune.data.prepare import prepare

    src, ref_out, ref_seconds = prepare_reference
    out = tmp / f"dataset_{seed}"
    rng = random.Random(seed)
    killed, what = kill_cli(
        ["prepare", src, "--out", out, "--asr-model", asr_model, "--qa-mos", "off"],
        exists(out),
        rng.uniform(0.0, 1.5 * ref_seconds + 1.0),
    )
    why = f"kill trial prepare seed={seed}: {what} (replay: VOICETUNE_KILL_SEED={seed})"
    print(why)
    if (
        killed
    ):  # what the kill left: no dataset that looks complete unless it is (only the caches may be there)
        assert not (out / "metadata_train.csv").exists() or _clips(out) == _clips(ref_out), why
    prepare(src, out, asr_model=asr_model, qa_mos="off")
    assert _clips(out) == _clips(ref_out), why  # no duplicated or missing clips
    assert sorted(p.name for p in (out / "wavs").iterdir()) == sorted(
        p.name for p in (ref_out / "wavs").iterdir()
    )
    assert not leftovers(out), (why, leftovers(out))  # the killed run's hidden folder was cleaned


@pytest.mark.parametrize("seed", trial_seeds("prepare-fast", 1))
def test_prepare_killed_then_run_again_gives_the_same_clips(seed, prepare_reference, asr_model, tmp_path):
    _prepare_trial(seed, prepare_reference, asr_model, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", trial_seeds("prepare", 8))
def test_prepare_kill_trials(seed, prepare_reference, asr_model, tmp_path):
    _prepare_trial(seed, prepare_reference, asr_model, tmp_path)


# ----------------------------------------------------------------------------------------------------- export


def _export_trial(seed: int, run: Path, tmp: Path, earlier: bool) -> None:
    """Killed while the package is built (from the moment its hidden folder appears to past the end); an
    earlier package in --out is either intact or replaced by the complete new one; the same command again
    completes."""
    from voicetune.packaging import export

    out = tmp / f"pkg_{seed}"
    if earlier:
        export(run, out, checkpoint="step_1")
    t0 = time.monotonic()
    export(run, tmp / "timing", checkpoint="step_2")
    seconds = time.monotonic() - t0
    rng = random.Random(seed)
    _, what = kill_cli(
        ["export", run, "--out", out, "--checkpoint", "step_2"],
        building(tmp, f".{out.name}."),
        rng.uniform(0.0, 1.2 * seconds),
    )
    why = (f"kill trial export seed={seed} (earlier package: {earlier}): {what} "
           f"(replay: VOICETUNE_KILL_SEED={seed})")
    print(why)
    if (out / "voicetune.json").exists():  # whatever looks like a package is a complete one (old or new)
        manifest = json.loads((out / "voicetune.json").read_text())
        assert manifest["checkpoint"] in ("step_1", "step_2"), why
        assert {p.name for p in out.iterdir()} >= {"model.pth", "config.json", "reference", "README.md"}, why
        torch.load(out / "model.pth", weights_only=True)
    export(run, out, checkpoint="step_2")
    assert json.loads((out / "voicetune.json").read_text())["checkpoint"] == "step_2", why
    assert not leftovers(out), (why, leftovers(out))


@pytest.mark.parametrize("seed", trial_seeds("export-fast", 1))
def test_export_killed_then_run_again_writes_a_complete_package(seed, run_copy, tmp_path):
    _export_trial(seed, run_copy(), tmp_path, earlier=True)


@pytest.mark.slow
@pytest.mark.parametrize("earlier,seed", [(i % 2 == 0, s) for i, s in enumerate(trial_seeds("export", 6))])
def test_export_kill_trials(earlier, seed, run_copy, tmp_path):
    _export_trial(seed, run_copy(), tmp_path, earlier)


def test_a_kill_between_creating_and_marking_a_checkpoint_folder_leaves_nothing_behind(
    run_copy, tiny_dataset, tiny_base
):
    """Found by a kill trial (seed 841961): killed 2 ms after the first checkpoint's hidden folder appeared,
    before voicetune had marked it as its own; starting the run again must remove it too."""
    import shutil

    from voicetune.training.loop import train

    run = run_copy()
    for name in ("checkpoints", "config.yaml", "run.json", "metrics.jsonl", "tensorboard"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    (run / "checkpoints" / ".step_1.x1y2z3.tmp").mkdir(parents=True)  # created, not yet marked
    train(tiny_dataset, tiny_base, run, max_steps=1, **TRAIN)
    assert not leftovers(run / "checkpoints"), leftovers(run / "checkpoints")
