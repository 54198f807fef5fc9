"""Every registered backend through the same cycle: tiny base -> a few steps -> save, resume (exact),
evaluate,
export, load the export back. Nothing here knows a backend: it uses only the contract
(voicetune.backends.base) and the library functions users call.

A new backend needs no edit here: registering it adds it to the parametrization, and ``make_tiny_base`` (part
of the contract) builds its base from the shared tiny dataset. Options it needs for a short CPU run go into
:data:`OPTIONS` (one entry); anything else about it belongs in its own tests under tests/backends/<name>/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voicetune.backends.base import Backend, FeatureStore
from voicetune.backends.registry import (
    available_backends,
    backend_class,
    detect_backend,
    get_backend,
    load_train_config,
)
from voicetune.backends.tiny import make_tiny_base
from voicetune.data.manifest import Dataset
from voicetune.run import latest_checkpoint, trainable_path
from voicetune.training.loop import train

TOLERANCE = 1e-6
STEPS = 4
COMMON = {"batch_size": 2, "seed": 5, "save_every": 2, "eval_every": 0, "eval_every_epochs": 0,
          "device": "cpu"}
OPTIONS: dict[str, dict] = {  # per backend: what a short CPU run needs beyond COMMON (default: nothing)
    "xtts": {"lr": 1e-3},
    "tortoise": {"lr": 1e-3},
    "csm": {"lr": 1e-3},
    "fake": {"lr": 1e-2},
}


@pytest.fixture(scope="module", params=available_backends())
def cycle(request, tiny_dataset, asr_model, tmp_path_factory):
    """One backend's tiny base and an uninterrupted run of STEPS steps (checkpoints every 2)."""
    name = request.param
    root = tmp_path_factory.mktemp(f"contract_{name}")
    base = make_tiny_base(name, root / "base", dataset=tiny_dataset, seed=0)
    options = {**COMMON, "backend": name, **OPTIONS.get(name, {})}
    reference = train(tiny_dataset, base, root / "reference", max_steps=STEPS, **options)
    return name, root, base, options, reference


def test_the_class_level_hooks_describe_the_tiny_base(cycle):
    name, _, base, _, _ = cycle
    cls = backend_class(name)
    assert issubclass(cls, Backend) and cls.name == name
    assert cls.validate_base_folder(base) and cls.is_native_folder(base) and cls.is_untrained(base)
    assert detect_backend(base) == name  # no other backend claims its layout
    assert isinstance(cls.usage(), list) and isinstance(cls.base_layout, str) and cls.base_layout
    assert issubclass(cls.options, type(cls.options()))  # an options dataclass that builds with its defaults


def test_a_few_steps_train_and_log_the_declared_loss_parts(cycle, tiny_dataset):
    name, _, _, _, reference = cycle
    losses = [h["loss"] for h in reference.losses]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert set(backend_class(name).loss_parts) <= set(reference.losses[0])
    assert [p.name for p in (reference.run_dir / "checkpoints").glob("step_*")] and \
        latest_checkpoint(reference.run_dir).name == f"step_{STEPS}"
    backend = get_backend(name)
    backend.load_base(reference.run_dir / ".." / "base", torch.device("cpu"))
    store = backend.build_features(Dataset.load(tiny_dataset).train, reference.run_dir / "features")
    assert isinstance(store, FeatureStore) and len(store) == len(store.lengths()) > 0


def test_a_resumed_run_continues_exactly(cycle, tiny_dataset):
    name, root, base, options, reference = cycle
    run = root / "resumed"
    train(tiny_dataset, base, run, max_steps=STEPS // 2, **options)
    second = train(resume=run, max_steps=STEPS)
    assert second.resumed_from == STEPS // 2
    for got, want in zip(second.losses, reference.losses[STEPS // 2:], strict=True):
        for key in ("loss", *backend_class(name).loss_parts):
            assert abs(got[key] - want[key]) <= TOLERANCE * max(1.0, abs(want[key])), (key, got, want)
    ours, theirs = (torch.load(trainable_path(latest_checkpoint(r)), weights_only=True)
                    for r in (run, reference.run_dir))
    tensors = [k for k, v in theirs.items() if torch.is_tensor(v)]
    assert tensors and all(torch.equal(ours[k], theirs[k]) for k in tensors)


def test_evaluate_scores_the_checkpoint_against_the_base(cycle, asr_model):
    from voicetune.evaluation.rescore import rescore_run

    _, _, _, _, reference = cycle
    result = rescore_run(reference.run_dir, "latest", device="cpu", max_sentences=1, probes=1,
                         num_references=1,
                         asr_model=asr_model)
    assert result.evaluated == [f"step_{STEPS}"]
    doc = result.docs[f"step_{STEPS}"]
    assert doc["finetuned"]["aggregate"]["n_sentences"] == 4 and "summary" in doc  # 2 sentences x 2 seeds
    rows = doc["finetuned"]["per_sentence"]
    assert [(r["sentence"], r["seed"]) for r in rows] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert result.verdict  # the plain verdict, printed by `voicetune evaluate`
    assert result.report.is_file()


def test_the_export_loads_back_and_renders_what_the_checkpoint_renders(cycle, tiny_dataset):
    from voicetune.packaging import export

    name, root, _, _, reference = cycle
    package = export(reference.run_dir, root / "package", check=False)  # the check: the slow test below
    cls = backend_class(name)
    assert cls.is_native_folder(package) and detect_backend(package) == name
    assert (package / "voicetune.json").is_file() and (package / "README.md").is_file()
    refs = [c.audio_path for c in Dataset.load(tiny_dataset).train[:2]]
    text = Dataset.load(tiny_dataset).eval[0].text

    trained = get_backend(name)
    trained.load_base(reference.run_dir / ".." / "base", torch.device("cpu"))
    trained.load_trained(trainable_path(latest_checkpoint(reference.run_dir)))
    loaded = get_backend(name)
    loaded.load_base(package, torch.device("cpu"))
    for b in (trained, loaded):
        b.set_train(False)
    a, b = (m.synthesize(text, refs, "en", seed=3) for m in (trained, loaded))
    assert a.sample_rate == b.sample_rate and a.audio.size > 0
    np.testing.assert_array_equal(a.audio, b.audio)


@pytest.mark.slow
def test_the_export_check_reloads_the_export_and_compares_it_with_the_checkpoint_and_the_base(
    cycle, tmp_path
):
    """voicetune export's check (packaging.check_export) through the contract alone: it passes, or, where the
    short run did not move the renders, says it cannot tell; it never refuses a correct export."""
    from voicetune.packaging import export, read_package

    _, _, _, _, reference = cycle
    check = read_package(export(reference.run_dir, tmp_path / "package"))["export_check"]
    assert check["checked"] and check["passed"] in (True, None) and check["sentences"] == 2
    assert check["passed"] is None or not check["export_vs_base"]["indistinguishable"]


def test_synthesize_batch_defaults_to_one_by_one_with_errors_in_place(cycle, tiny_dataset):
    name, _, base, _, _ = cycle
    backend = get_backend(name)
    backend.load_base(base, torch.device("cpu"))
    backend.set_train(False)
    refs = [c.audio_path for c in Dataset.load(tiny_dataset).train[:1]]
    one = backend.synthesize("Good morning.", refs, "en", 1)
    batch = backend.synthesize_batch(["Good morning.", ""], refs, "en", [1, 2])
    np.testing.assert_array_equal(batch[0].audio, one.audio)
    assert len(batch) == 2 and (isinstance(batch[1], Exception) or batch[1].audio.size >= 0)


def test_set_train_is_what_trainable_training_reports(cycle):
    """The loop re-enters training mode after its callbacks only when ``trainable().training`` is False."""
    name, _, base, _, _ = cycle
    backend = get_backend(name)
    backend.load_base(base, torch.device("cpu"))
    for mode in (False, False, True, True, False, True):
        backend.set_train(mode)
        assert backend.trainable().training is mode


def test_validation_loss_gives_the_trained_parts_on_the_eval_split_without_gradients(cycle, tiny_dataset):
    """Backend.validation_loss (what the in-loop validation losses call, voicetune.evaluation.validation): the
    declared parts, finite, the same twice in inference mode, and nothing for the optimizer to follow."""
    from voicetune.evaluation.validation import build_validation_set, validation_losses

    name, root, _, _, reference = cycle
    cfg = load_train_config(reference.run_dir / "config.yaml")
    (root / "val").mkdir()
    backend = get_backend(name)
    backend.load_base(reference.run_dir / ".." / "base", torch.device("cpu"))
    texts = [(c.text, c.language) for c in Dataset.load(tiny_dataset).train]
    backend.configure_model(cfg, root / "val", texts)
    backend.load_trained(trainable_path(latest_checkpoint(reference.run_dir)))
    vs = build_validation_set(backend, Dataset.load(tiny_dataset).eval, root / "val" / "features", cfg)
    assert vs is not None and len(vs) == 2
    first, second = (validation_losses(backend, vs, cfg) for _ in range(2))
    assert set(first) == {"val_loss", *(f"val_{p}" for p in backend_class(name).loss_parts)}
    assert all(np.isfinite(v) for v in first.values()) and first == second
    assert backend.trainable().training is False
    assert all(p.grad is None for p in backend.trainable().parameters())


def test_registered_backends_include_the_real_ones():
    assert {"xtts", "tortoise"} <= set(available_backends())
    assert Path(__file__).parent.joinpath("fake.py").is_file()
