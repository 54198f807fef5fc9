"""Per-clip measures and decisions of prepare's quality control, on synthetic signals with known answers
and on real Piper speech (the batched models must give the per-clip metrics' numbers)."""

import numpy as np
import pytest

from voicetune.audio.io import load_audio
from voicetune.config import PrepareConfig
from voicetune.data import quality as qa
from voicetune.data.manifest import ClipRecord
from voicetune.data.transcribe import Transcript
from voicetune.scoring import mos, speaker

CFG = PrepareConfig()


def test_clipping_ratio_counts_full_scale_and_flat_tops_but_not_clean_audio():
    t = np.arange(16000) / 16000
    sine = 0.8 * np.sin(2 * np.pi * 220 * t).astype(np.float32)
    assert qa.clipping_ratio(sine) == 0.0
    hard = np.clip(sine * 3, -1, 1)
    assert qa.clipping_ratio(hard) > 0.3
    lowered = np.clip(sine * 3, -0.9, 0.9) * 0.5  # clipped, then the level was lowered: flat tops remain
    assert qa.clipping_ratio(lowered) > 0.3
    assert qa.clipping_ratio(np.zeros(0, np.float32)) == 0.0


def test_snr_estimate_follows_the_noise_floor_next_to_the_clip():
    fs = 0.032
    probs = np.zeros(400, np.float32)
    probs[100:200] = 0.95  # speech frames 3.2-6.4 s
    speech_db, noise_db = -20.0, -50.0
    energy = np.full(400, noise_db, np.float32)
    energy[100:200] = speech_db
    snr = qa.snr_db(probs, energy, fs, 3.0, 6.6, 0.5)
    assert snr == pytest.approx(30.0, abs=0.5)
    energy[80:220] = np.maximum(energy[80:220], -25.0)  # a noise burst around this clip only
    assert qa.snr_db(probs, energy, fs, 3.0, 6.6, 0.5) < 10.0
    assert qa.snr_db(probs, np.full(400, -130.0, np.float32) + (probs > 0.5) * 100, fs, 3.0, 6.6, 0.5) == 99.0
    assert qa.snr_db(probs, energy, fs, 9.0, 10.0, 0.5) is None  # no speech in the clip


def test_robust_z_ignores_the_outliers_it_measures():
    z = qa.robust_z([14, 15, 15, 16, 14.5, 15.5, 40])
    assert abs(z[:-1]).max() < 1.5 and z[-1] > 10


def _rec(i, rate, speaker="a"):
    return ClipRecord(
        f"c{i}",
        f"wavs/c{i}.wav",
        "s.wav",
        0,
        3,
        3,
        "some words here",
        "en",
        speaker,
        quality={"chars_per_second": rate},
    )


def test_speaking_rate_outliers_are_flagged_per_speaker():
    cfg = PrepareConfig(qa_speaker=False)
    recs = [_rec(i, 15 + 0.3 * (i % 5)) for i in range(12)] + [_rec(99, 45.0)]
    recs += [_rec(100 + i, 8 + 0.2 * (i % 4), "b") for i in range(10)]  # a slow speaker is not an outlier
    qa.dataset_reasons(recs, {}, cfg)
    flagged = [r.id for r in recs if r.reasons]
    assert (
        flagged == ["c99"]
        and "speaking-rate outlier" in recs[12].reasons[0]
        and "fast" in recs[12].reasons[0]
    )


def test_speaker_check_flags_a_foreign_embedding_and_needs_enough_clips():
    rng = np.random.default_rng(0)
    base = rng.normal(size=256)
    embs = {}
    recs = []
    for i in range(8):
        e = base + 0.2 * rng.normal(size=256)
        embs[f"c{i}"] = (e / np.linalg.norm(e)).astype(np.float32)
        recs.append(_rec(i, 15.0))
    other = rng.normal(size=256)
    embs["c8"] = (other / np.linalg.norm(other)).astype(np.float32)
    recs.append(_rec(8, 15.0))
    warnings = qa.dataset_reasons(recs, embs, PrepareConfig())
    assert [r.id for r in recs if r.reasons] == ["c8"] and "different voice" in recs[8].reasons[0]
    assert recs[0].quality["speaker_similarity"] > 0.9 and not warnings
    few = [_rec(i, 15.0) for i in range(3)]
    assert "not checked" in qa.dataset_reasons(few, {r.id: embs["c0"] for r in few}, PrepareConfig())[0]


def test_transcript_checks_and_second_opinion_triggers():
    good = Transcript("Hello there, how are you?", "en", -0.2, 0.01, [], 1.0, -0.1)
    assert qa.transcript_reasons(good, 2.0, CFG) == [] and qa.is_uncertain(good, 2.0, CFG) == ""
    assert "no words" in qa.is_uncertain(Transcript("", "en", -10, 1.0, []), 2.0, CFG)
    assert "confidence" in qa.is_uncertain(Transcript("Mumble", "en", -0.9, 0.1, []), 2.0, CFG)
    assert "few words" in qa.is_uncertain(Transcript("Hi.", "en", -0.1, 0.0, []), 6.0, CFG)
    assert qa.transcript_disagreement("The cat sat.", "the cat sat") == 0.0
    assert qa.transcript_disagreement("the cat sat", "a dog ran") == 1.0


def test_batched_speaker_embeddings_and_mos_equal_the_per_clip_metrics(piper_sentences):
    clips = [load_audio(p, sr=16000)[0] for p, _ in piper_sentences[:3]]
    batched = speaker.speaker_embeddings(clips + [np.zeros(16000, np.float32)])
    for clip, e in zip(clips, batched):
        assert float(np.dot(e, speaker.speaker_embedding(clip, 16000))) == pytest.approx(1.0, abs=1e-4)
    assert batched[-1] is None
    scores = mos.predicted_mos_batch(clips[:2])
    assert scores == pytest.approx([mos.predicted_mos(c, 16000) for c in clips[:2]], abs=1e-3)
