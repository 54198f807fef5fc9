"""The XTTS feature cache: computed once, keyed by content, faithful to Coqui's per-step pipeline."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from voicetune.backends.xtts.features import MAX_CONDITIONING_LENGTH, MIN_CONDITIONING_LENGTH, load_wav_tensor
from voicetune.data.manifest import Clip

from ._helpers import synthetic_speechlike


def test_features_are_computed_once_then_reused(xtts_shared_backend, xtts_clips, tmp_path):
    store = xtts_shared_backend.build_features(xtts_clips, tmp_path / "features")
    assert (store.computed, store.reused, len(store)) == (len(xtts_clips), 0, len(xtts_clips))
    files = sorted((tmp_path / "features").glob("*.pt"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = xtts_shared_backend.build_features(xtts_clips, tmp_path / "features")
    assert (again.computed, again.reused) == (0, len(xtts_clips))
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert again.lengths() == store.lengths()


def test_a_changed_transcript_recomputes_only_that_clip(xtts_shared_backend, xtts_clips, tmp_path):
    xtts_shared_backend.build_features(xtts_clips, tmp_path / "f")
    edited = [
        Clip(xtts_clips[0].audio_path, xtts_clips[0].text + " Really.", "speaker", "en"),
        *xtts_clips[1:],
    ]
    store = xtts_shared_backend.build_features(edited, tmp_path / "f")
    assert (store.computed, store.reused) == (1, len(xtts_clips) - 1)


def test_progress_is_reported(xtts_shared_backend, xtts_clips, tmp_path):
    calls = []
    xtts_shared_backend.build_features(xtts_clips[:2], tmp_path / "f", lambda d, t, w: calls.append((d, t)))
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)


def test_unusable_clips_are_skipped_with_a_warning_naming_them(
    xtts_shared_backend, xtts_clips, tmp_path, caplog
):
    long_wav = synthetic_speechlike(tmp_path / "long.wav", 12.0, 120.0)
    short_wav = synthetic_speechlike(tmp_path / "short.wav", 0.3, 120.0)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    good = xtts_clips[0]
    bad = [
        Clip(long_wav, "A clip that is too long.", "s"),
        Clip(short_wav, "Too short.", "s"),
        Clip(broken, "Cannot be decoded.", "s"),
        Clip(good.audio_path, "word " * 250, "s"),
        Clip(good.audio_path, "   ", "s"),
    ]
    with caplog.at_level(logging.WARNING):
        store = xtts_shared_backend.build_features([good, *bad], tmp_path / "f")
    assert len(store) == 1 and len(store.dropped) == len(bad)
    reasons = dict(store.dropped)
    assert "longer than max_wav_length" in reasons[str(long_wav)]
    assert "shorter than 0.5 s" in reasons[str(short_wav)]
    assert "cannot read the audio" in reasons[str(broken)]
    for path in (long_wav, short_wav, broken):
        assert f"skipping clip {path}" in caplog.text
    assert "more than max_text_length" in caplog.text and "empty transcript" in caplog.text
    assert f"dropped {len(bad)} of {len(bad) + 1} clips" in caplog.text


def test_codes_and_conditioning_match_coqui_computed_on_the_waveform(
    xtts_shared_backend, xtts_clips, tmp_path
):
    """What GPTTrainer.format_batch_on_device computes per step is what the cache holds."""
    from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram

    clip = xtts_clips[0]
    store = xtts_shared_backend.build_features([clip], tmp_path / "f")
    record = torch.load(store.files[0], weights_only=True)
    wav = load_wav_tensor(clip.audio_path, 22050)
    mel_stats = xtts_shared_backend._mel_stats
    dvae_mel = TorchMelSpectrogram(mel_norm_file=None, sampling_rate=22050)
    dvae_mel.mel_norms = mel_stats
    codes = xtts_shared_backend._dvae.get_codebook_indices(dvae_mel(wav))[0]
    assert torch.equal(record["audio_codes"].long(), codes)
    assert abs(record["audio_codes"].numel() - math.ceil(wav.shape[-1] / 1024)) <= 1
    assert record["wav_length"] == wav.shape[-1]
    assert torch.equal(
        record["text_tokens"],
        torch.tensor(xtts_shared_backend.model.tokenizer.encode(clip.text, "en"), dtype=torch.int32),
    )

    # Coqui's evaluation crop: the first 4.5 s (or half the clip), zero-padded to 6 s, then the style mel.
    store.random_crop = False
    item = store[0]
    length = (MIN_CONDITIONING_LENGTH + MAX_CONDITIONING_LENGTH) // 2
    length = length if wav.shape[-1] >= length else wav.shape[-1] // 2
    style = TorchMelSpectrogram(filter_length=2048, hop_length=256, win_length=1024, mel_norm_file=None)
    style.mel_norms = mel_stats
    padded = torch.nn.functional.pad(wav[:, :length], (0, MAX_CONDITIONING_LENGTH - length))
    expected = style(padded)[0]
    # Coqui's 517 frames, then silence up to 520 (a multiple of 8, for aligned GPU kernels)
    assert expected.shape == (80, MAX_CONDITIONING_LENGTH // 256 + 1) and item["cond_mel"].shape == (80, 520)
    torch.testing.assert_close(item["cond_mel"][:, 517:], item["cond_mel"][:, 516:517].expand(-1, 3))
    inner = length // 256 - 4  # frames whose STFT window lies inside the crop
    torch.testing.assert_close(item["cond_mel"][:, :inner], expected[:, :inner], rtol=1e-4, atol=1e-4)
    tail = MAX_CONDITIONING_LENGTH // 256 - 1  # well inside the padding: silence in both
    torch.testing.assert_close(item["cond_mel"][:, tail], expected[:, tail], rtol=1e-4, atol=1e-4)
    assert int(item["cond_len"]) == length


def test_conditioning_crops_vary_between_reads_and_repeat_with_the_seed(
    xtts_shared_backend, xtts_clips, tmp_path
):
    a = xtts_shared_backend.build_features(xtts_clips[:1], tmp_path / "f")
    b = xtts_shared_backend.build_features(xtts_clips[:1], tmp_path / "f")
    b.seed = a.seed
    first = [a[0]["cond_mel"] for _ in range(6)]
    # a new random crop (position, and length for clips over 3 s) each time the clip is used
    assert any(not torch.equal(first[0], m) for m in first[1:])
    assert all(torch.equal(x, y) for x, y in zip(first, [b[0]["cond_mel"] for _ in range(6)]))
    a.set_epoch(1)
    assert not all(torch.equal(x, a[0]["cond_mel"]) for x in first)
    lengths = [a[0]["cond_len"].item() for _ in range(20)]
    clip_len = torch.load(a.files[0], weights_only=True)["wav_length"]
    assert all(n == clip_len // 2 or MIN_CONDITIONING_LENGTH <= n <= min(clip_len, MAX_CONDITIONING_LENGTH)
               for n in lengths)


def test_collate_pads_into_the_gpt_batch(xtts_shared_backend, xtts_clips, tmp_path):
    store = xtts_shared_backend.build_features(xtts_clips, tmp_path / "f")
    items = [store[i] for i in range(len(store))]
    batch = xtts_shared_backend.collate(items)
    n = len(items)
    assert batch["text_inputs"].shape == (n, max(len(i["text_tokens"]) for i in items))
    assert batch["audio_codes"].shape == (n, max(store.lengths()))
    assert batch["cond_mels"].shape == (n, 1, 80, 520)
    assert batch["text_lengths"].tolist() == [len(i["text_tokens"]) for i in items]
    assert all(v.dtype == torch.long for k, v in batch.items() if k != "cond_mels")
    short = min(range(n), key=lambda i: store.lengths()[i])
    stop = xtts_shared_backend.config.model_args.gpt_stop_audio_token
    assert (batch["audio_codes"][short, store.lengths()[short]:] == stop).all()


@pytest.mark.parametrize("language", ["xx"])
def test_an_unsupported_language_drops_the_clip(xtts_shared_backend, xtts_clips, tmp_path, language):
    store = xtts_shared_backend.build_features(
        [Clip(xtts_clips[0].audio_path, "hello", "s", language)], tmp_path / "f"
    )
    assert len(store) == 0 and "not supported" in store.dropped[0][1]
