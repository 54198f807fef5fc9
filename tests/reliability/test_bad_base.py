"""Broken base-model folders given to `train`: each refused naming the file and what is wrong with it, before
any checkpoint is written; the folder itself is never changed (coqui-tts would rewrite an old model.pth: we do
not)."""

from __future__ import annotations

import json

import pytest
import torch

from .helpers import (
    assert_nothing_partial,
    assert_reported,
    assert_unchanged,
    cli,
    digest,
    linked_copy,
    replace_file,
)


def _missing_model(base):
    (base / "model.pth").unlink()


def _empty_dvae(base):
    replace_file(base / "dvae.pth", b"")


def _truncated_model(base):
    data = (base / "model.pth").read_bytes()
    replace_file(base / "model.pth", data[: len(data) // 2])


def _config_not_json(base):
    replace_file(base / "config.json", b'{"model": "xtts", "model_args": {')


def _config_other_model(base):
    cfg = json.loads((base / "config.json").read_text())
    replace_file(base / "config.json", json.dumps({**cfg, "model": "vits"}).encode())


def _mel_stats_wrong_shape(base):
    (base / "mel_stats.pth").unlink()
    torch.save(torch.ones(10), base / "mel_stats.pth")


def _vocab_not_a_tokenizer(base):
    replace_file(base / "vocab.json", b'{"hello": "world"}')


def _dvae_of_another_model(base):
    state = torch.load(base / "dvae.pth", weights_only=True)
    state["codebook.embed"] = torch.zeros(state["codebook.embed"].shape[0], 7)
    (base / "dvae.pth").unlink()
    torch.save(state, base / "dvae.pth")


def _model_is_a_folder(base):
    (base / "model.pth").unlink()
    (base / "model.pth").mkdir()


def _weights_of_another_config(base):
    cfg = json.loads((base / "config.json").read_text())
    cfg["model_args"]["gpt_layers"] = cfg["model_args"]["gpt_layers"] + 1
    replace_file(base / "config.json", json.dumps(cfg).encode())


BAD_BASES = {
    "missing_model_pth": (_missing_model, r"model\.pth: missing \(the GPT \+ HiFi-GAN weights\)"),
    "empty_dvae_pth": (_empty_dvae, r"dvae\.pth: empty"),
    "truncated_model_pth": (_truncated_model, r"model\.pth: cannot load the XTTS checkpoint"),
    "config_not_json": (_config_not_json, r"config\.json: unreadable, not valid JSON"),
    "config_of_another_model": (_config_other_model, r"config\.json: this is a config for model 'vits'"),
    "mel_stats_wrong_shape": (_mel_stats_wrong_shape, r"mel_stats\.pth: expected a tensor of 80 mel-channel"),
    "vocab_not_a_tokenizer": (_vocab_not_a_tokenizer, r"vocab\.json: cannot read the tokenizer"),
    "dvae_of_another_model": (_dvae_of_another_model, r"dvae\.pth: the DVAE has 7 codes .* different models"),
    "model_pth_is_a_folder": (_model_is_a_folder, r"model\.pth: not a file"),
    "weights_of_another_config": (
        _weights_of_another_config,
        r"model\.pth: weights do not match config\.json",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_BASES))
def test_a_broken_base_folder_is_refused_naming_the_file(kind, tiny_dataset, tiny_base, tmp_path):
    damage, expected = BAD_BASES[kind]
    base = linked_copy(tiny_base, tmp_path / "base")
    damage(base)
    before = digest(base, tiny_dataset)
    run = tmp_path / "run"
    outcome = cli(
        "train", tiny_dataset, "--base", base, "--out", run, "--max-steps", "1", "--eval-every-epochs", "0"
    )
    assert outcome.rc == 1
    assert_reported(outcome, expected)  # 1. the file and the reason (2: nothing to go on with without a base)
    assert_unchanged(before, base, tiny_dataset)  # 3.
    assert_nothing_partial(run, "run")  # 4.


def test_a_base_path_that_is_a_file_is_refused(tiny_dataset, tiny_base, tmp_path):
    outcome = cli(
        "train",
        tiny_dataset,
        "--base",
        tiny_base / "config.json",
        "--out",
        tmp_path / "run",
        "--max-steps",
        "1",
    )
    assert outcome.rc == 1
    assert_reported(outcome, r"config\.json: base model folder does not exist or is not a folder")
    assert_nothing_partial(tmp_path / "run", "run")
