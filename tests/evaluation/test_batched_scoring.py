"""Scoring in batches (harness.model_scores): every render gets the numbers it gets when scored alone.

Tolerance: transcripts identical; speaker similarity and predicted MOS to 1e-4 (the same models on the same
audio; batched matrix products may round differently in the last bits).
"""

from __future__ import annotations

import numpy as np
import pytest

from voicetune.audio.io import load_audio
from voicetune.evaluation import metrics as M
from voicetune.evaluation.harness import Render, model_scores


@pytest.fixture(scope="module")
def renders(piper_sentences):
    """Real speech at 24 kHz (what XTTS renders), a noise burst (no speech for the VAD) and digital
    silence."""
    out = []
    for path, _ in piper_sentences[:4]:
        audio, sr = load_audio(path)
        out.append(Render(M.audio_at(audio, sr, 24000), 24000))
    rng = np.random.default_rng(0)
    out.append(Render((0.05 * rng.standard_normal(24000)).astype(np.float32), 24000))
    out.append(Render(np.zeros(24000, np.float32), 24000))
    out.append(Render(None, 0, error="ValueError: failed"))
    return out


def test_batched_model_scores_equal_one_at_a_time(renders, piper_sentences, asr_model):
    asr = M.get_asr(asr_model, "en", "cpu")
    centroid = M.speaker_centroid([p for p, _ in piper_sentences[4:6]])
    together = model_scores(renders, asr, centroid, "cpu", "en")
    alone = {}
    for i, r in enumerate(renders):
        alone.update({i + k: v for k, v in model_scores([r], asr, centroid, "cpu", "en").items()})
    assert sorted(together) == sorted(alone) == [0, 1, 2, 3, 4, 5]  # the failed render has no audio to score
    for i in together:
        (hyp, sim, mos), (hyp1, sim1, mos1) = together[i], alone[i]
        assert hyp == hyp1
        np.testing.assert_allclose([sim, mos], [sim1, mos1], rtol=0, atol=1e-4, equal_nan=True)
    # and the same numbers as the one-clip scorers: speaker_similarity, predicted_mos, the word error rate
    audio = renders[0].audio
    single = M.speaker_similarity([audio], [], 24000, "cpu", centroid=centroid)["per_clip"][0]
    assert together[0][1] == pytest.approx(single, abs=1e-4)
    assert together[0][2] == pytest.approx(M.predicted_mos(audio, 24000, "cpu"), abs=1e-4)
    assert M.wer_cer(piper_sentences[0][1], together[0][0])["wer"] < 0.2
    assert np.isnan(together[5][1]) and together[5][2] == 1.0  # digital silence: no embedding, the MOS floor
    assert not np.isnan(together[4][1])  # noise: embedded untrimmed, a (low) similarity
