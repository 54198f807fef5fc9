"""The tortoise-v2 base folder: validation names what is missing and where users get it; every file is read
with weights_only; mel normalisation comes from the folder's mel_norms.pth, never from a URL."""

from __future__ import annotations

import json

import pytest
import torch

from voicetune.backends.base import BaseModelError, get_backend
from voicetune.backends.registry import detect_backend
from voicetune.backends.tortoise import layout

from ..xtts._helpers import linked_copy


def test_the_tiny_base_has_the_tortoise_v2_layout_and_is_detected(tortoise_base):
    files = layout.validate_base_dir(tortoise_base)
    assert set(layout.REQUIRED_FILES) <= set(files) and layout.CONFIG in files
    assert detect_backend(tortoise_base) == "tortoise"
    from voicetune.backends.registry import backend_class

    assert backend_class("tortoise").is_untrained(tortoise_base)
    assert not backend_class("xtts").is_native_folder(tortoise_base)


@pytest.mark.parametrize("missing, words", [
    (layout.DVAE, ["dvae.pth", "DL-Art-School", "8,192", "jbetker/tortoise-tts-v2"]),
    (layout.MEL_NORMS, ["mel_norms.pth", "tortoise/data/mel_norms.pth"]),
    (layout.VOCODER, ["vocoder.pth", "jbetker/tortoise-tts-v2"]),
])
def test_a_missing_file_is_named_with_where_to_get_it(tortoise_base, tmp_path, missing, words):
    folder = linked_copy(tortoise_base, tmp_path / "base", skip=(missing,))
    with pytest.raises(BaseModelError) as e:
        layout.validate_base_dir(folder)
    for word in words:
        assert word in str(e.value)
    (folder / missing).write_bytes(b"")
    with pytest.raises(BaseModelError, match=f"{missing}: empty"):
        layout.validate_base_dir(folder)


def test_a_folder_without_config_json_is_tortoise_v2_and_a_foreign_config_is_refused(tortoise_base, tmp_path):
    folder = linked_copy(tortoise_base, tmp_path / "base", skip=(layout.CONFIG,))
    config, raw = layout.load_config(layout.validate_base_dir(folder))
    assert raw == {} and config.model_args.ar_layers == 30 and config.model_args.ar_model_dim == 1024
    data = json.loads((tortoise_base / layout.CONFIG).read_text())
    data["model_args"]["ar_layers"] = 3  # weights of 2 layers under a config of 3
    (folder / layout.CONFIG).write_text(json.dumps(data))
    with pytest.raises(BaseModelError, match="autoregressive.pth: the autoregressive model lacks"):
        get_backend("tortoise").load_base(folder, torch.device("cpu"))
    (folder / layout.CONFIG).write_text(json.dumps({"model": "xtts"}))
    with pytest.raises(BaseModelError, match="not a Tortoise model"):
        layout.validate_base_dir(folder)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_files_are_never_unpickled(tortoise_base, tmp_path):
    folder = linked_copy(tortoise_base, tmp_path / "base", skip=(layout.AUTOREGRESSIVE,))
    torch.save({"gpt.h.0.x": _Payload()}, folder / layout.AUTOREGRESSIVE)
    with pytest.raises(BaseModelError, match="autoregressive.pth: cannot load the autoregressive model"):
        get_backend("tortoise").load_base(folder, torch.device("cpu"))


def test_a_dvae_of_another_codebook_size_is_refused(tortoise_base, tmp_path):
    from TTS.tts.layers.xtts.dvae import DiscreteVAE

    from voicetune.backends.gpt_tts.files import DVAE_DEFAULTS

    folder = linked_copy(tortoise_base, tmp_path / "base", skip=(layout.DVAE,))
    dvae = DiscreteVAE(**{**DVAE_DEFAULTS, "hidden_dim": 32, "codebook_dim": 32, "num_resnet_blocks": 1},
                       normalization=None, num_tokens=1024)  # XTTS's 1024 codes, not DL-Art-School's 8192
    torch.save(dvae.state_dict(), folder / layout.DVAE)
    with pytest.raises(BaseModelError, match="1024 codes but autoregressive.pth reads 8192"):
        get_backend("tortoise").load_base(folder, torch.device("cpu"))


def test_older_checkpoints_with_attention_buffers_and_inference_aliases_load(tortoise_base, tmp_path):
    folder = linked_copy(tortoise_base, tmp_path / "base", skip=(layout.AUTOREGRESSIVE,))
    state = torch.load(tortoise_base / layout.AUTOREGRESSIVE, weights_only=True)
    state["gpt.h.0.attn.bias"] = torch.ones(1, 1, 8, 8, dtype=torch.bool)  # transformers < 4.3x buffers
    state["gpt.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    state["inference_model.lm_head.1.weight"] = state["mel_head.weight"]
    torch.save(state, folder / layout.AUTOREGRESSIVE)
    b = get_backend("tortoise")
    b.load_base(folder, torch.device("cpu"))
    assert torch.equal(b.gpt.mel_head.weight, state["mel_head.weight"])
    del state["mel_head.weight"]
    torch.save(state, folder / layout.AUTOREGRESSIVE)
    with pytest.raises(BaseModelError, match="lacks 1 tensors"):
        get_backend("tortoise").load_base(folder, torch.device("cpu"))


def test_mel_normalisation_reads_the_local_mel_norms_never_a_url(tortoise_base, tortoise_clips, tmp_path,
                                                                   monkeypatch):
    import fsspec
    from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram

    opened = []
    original = fsspec.open

    def recording_open(path, *args, **kwargs):
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(fsspec, "open", recording_open)
    b = get_backend("tortoise")
    b.load_base(tortoise_base, torch.device("cpu"))
    store = b.build_features(tortoise_clips[:2], tmp_path / "features")
    b.set_train(False)
    # what synthesis conditions on (coqui-tts's format_conditioning reads the norms)
    with torch.inference_mode():
        b._conditioning([tortoise_clips[0].audio_path], seed=0)
    assert opened and all(p == str(tortoise_base / layout.MEL_NORMS) for p in opened), opened
    # the cached mel is TorchMelSpectrogram normalised by the folder's file
    from voicetune.backends.gpt_tts.files import load_wav_tensor

    item = torch.load(store.files[0], weights_only=True)
    reference = TorchMelSpectrogram(mel_norm_file=str(tortoise_base / layout.MEL_NORMS))
    wav = load_wav_tensor(tortoise_clips[0].audio_path, 22050)
    torch.testing.assert_close(item["mel"], reference(wav)[0])
