"""The XTTS-v2 folder layout: validation names what is wrong; real checkpoint variants load."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from voicetune.backends.base import BaseModelError
from voicetune.backends.xtts import layout
from voicetune.utils.io import file_sha256

from ._helpers import linked_copy


def test_tiny_base_validates_with_every_layout_file(xtts_base):
    found = layout.validate_base_dir(xtts_base)
    assert set(found) == set(layout.LAYOUT_FILES)
    assert all(p.is_file() for p in found.values())


@pytest.mark.parametrize("missing", layout.REQUIRED_FILES)
def test_each_missing_required_file_is_named_in_the_error(xtts_base, tmp_path, missing):
    folder = linked_copy(xtts_base, tmp_path / "base", skip=(missing,))
    with pytest.raises(BaseModelError) as err:
        layout.validate_base_dir(folder)
    msg = str(err.value)
    assert str(folder / missing) in msg and "missing" in msg
    others = [f for f in layout.REQUIRED_FILES if f != missing]
    assert not any(str(folder / f) in msg for f in others)


def test_all_missing_files_are_named_at_once(xtts_base, tmp_path):
    folder = linked_copy(xtts_base, tmp_path / "base", skip=(layout.DVAE, layout.VOCAB))
    msg = str(pytest.raises(BaseModelError, layout.validate_base_dir, folder).value)
    assert layout.DVAE in msg and layout.VOCAB in msg


def test_missing_speakers_file_only_warns(xtts_base, tmp_path, caplog):
    folder = linked_copy(xtts_base, tmp_path / "base", skip=(layout.SPEAKERS,))
    with caplog.at_level(logging.WARNING):
        found = layout.validate_base_dir(folder)
    assert layout.SPEAKERS not in found
    assert layout.SPEAKERS in caplog.text


def test_empty_and_invalid_files_are_named(xtts_base, tmp_path):
    folder = linked_copy(xtts_base, tmp_path / "base", skip=(layout.CONFIG, layout.MEL_STATS))
    (folder / layout.CONFIG).write_text("{not json")
    (folder / layout.MEL_STATS).write_bytes(b"")
    msg = str(pytest.raises(BaseModelError, layout.validate_base_dir, folder).value)
    assert f"{folder / layout.CONFIG}: unreadable, not valid JSON" in msg
    assert f"{folder / layout.MEL_STATS}: empty" in msg


def test_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(BaseModelError, match="does not exist"):
        layout.validate_base_dir(tmp_path / "nope")


def _variants(state: dict) -> dict[str, dict]:
    """model.pth as Coqui's release, its GPTTrainer and XTTS v1 write it."""
    trainer = {f"xtts.{k}": v for k, v in state.items()}
    trainer["dvae.encoder.0.0.weight"] = torch.zeros(2, 80, 3)
    trainer["torch_mel_spectrogram_dvae.mel_stft.spectrogram.window"] = torch.zeros(4)
    trainer["xtts.torch_mel_spectrogram_style_encoder.mel_stft.spectrogram.window"] = torch.zeros(4)
    v1 = dict(state)
    v1["gpt.gpt_inference.lm_head.1.weight"] = state["gpt.mel_head.weight"]
    v1["gpt.gpt.wte.weight"] = state["gpt.mel_embedding.weight"]
    return {
        "plain": {"model": state},
        "trainer": {"config": {"model": "xtts"}, "model": trainer, "step": 10},
        "v1": {"model": v1},
        "bare": dict(state),
    }


def test_checkpoint_variants_load_to_the_model_keys_as_coqui_does(xtts_base, tmp_path):
    from TTS.tts.models.xtts import Xtts

    full = torch.load(xtts_base / layout.MODEL, weights_only=True)["model"]
    # the GPT and a few decoder tensors keep the files small; the key handling is the same
    state = {
        k: v for i, (k, v) in enumerate(full.items()) if not k.startswith("hifigan_decoder.") or i % 50 == 0
    }
    model = Xtts(layout.load_config(xtts_base / layout.CONFIG))
    for name, ckpt in _variants(state).items():
        path = tmp_path / f"{name}.pth"
        torch.save(ckpt, path)
        ours = layout.load_model_state(path)
        assert set(ours) == set(state), name
        assert all(torch.equal(ours[k], state[k]) for k in state), name
        if name in ("plain", "trainer"):  # what coqui-tts itself makes of the same file
            assert set(model.get_compatible_checkpoint_state_dict(path)) == set(ours)


def test_backend_loads_a_trainer_checkpoint_strictly(xtts_base, tmp_path):
    from voicetune.backends.xtts.backend import XttsBackend

    state = torch.load(xtts_base / layout.MODEL, weights_only=True)["model"]
    folder = linked_copy(xtts_base, tmp_path / "base", skip=(layout.MODEL,))
    torch.save(_variants(state)["trainer"], folder / layout.MODEL)
    b = XttsBackend()
    b.load_base(folder, torch.device("cpu"))
    assert torch.equal(b.model.gpt.mel_head.weight, state["gpt.mel_head.weight"])


def test_legacy_pickled_config_loads_without_rewriting_the_file(xtts_base, tmp_path):
    """The original XTTS-v2 model.pth pickles an XttsConfig; coqui-tts rewrites such a file, we must not."""
    from TTS.tts.models.xtts import _legacy_safe_globals

    state = torch.load(xtts_base / layout.MODEL, weights_only=True)["model"]
    path = tmp_path / "model.pth"
    with _legacy_safe_globals():
        torch.save({"config": layout.load_config(xtts_base / layout.CONFIG), "model": state}, path)
    before = file_sha256(path)
    assert set(layout.load_model_state(path)) == set(state)
    assert file_sha256(path) == before


def test_weights_of_another_architecture_are_rejected_naming_model_pth(xtts_base, tmp_path):
    from voicetune.backends.xtts.backend import XttsBackend

    folder = linked_copy(xtts_base, tmp_path / "base", skip=(layout.CONFIG,))
    cfg = json.loads((xtts_base / layout.CONFIG).read_text())
    cfg["model_args"]["gpt_layers"] = 3
    (folder / layout.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(BaseModelError, match="model.pth: weights do not match"):
        XttsBackend().load_base(folder, torch.device("cpu"))


def test_dvae_hyperparameters_are_read_from_the_real_xtts_shapes():
    from TTS.tts.layers.xtts.dvae import DiscreteVAE

    # XTTS-v2's (52 M parameters)
    dvae = DiscreteVAE(normalization=None, num_tokens=1024, **layout.DVAE_DEFAULTS)
    assert layout.infer_dvae_hparams(dvae.state_dict()) == {**layout.DVAE_DEFAULTS, "num_tokens": 1024}


def test_dvae_with_the_wrong_number_of_codes_is_rejected(xtts_base):
    with pytest.raises(BaseModelError, match="gpt_num_audio_tokens - 2 = 8192"):
        layout.load_dvae(xtts_base / layout.DVAE, expected_tokens=8192)


def test_mel_stats_must_be_80_nonzero_values(tmp_path):
    torch.save(torch.ones(40), tmp_path / "a.pth")
    torch.save(torch.zeros(80), tmp_path / "b.pth")
    with pytest.raises(BaseModelError, match="80 mel-channel"):
        layout.load_mel_stats(tmp_path / "a.pth")
    with pytest.raises(BaseModelError, match="zero or non-finite"):
        layout.load_mel_stats(tmp_path / "b.pth")
