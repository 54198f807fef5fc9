"""Predicted MOS: DistillMOS (weights shipped in the ``distillmos`` package), one clip or many."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from voicetune.scoring.common import AudioLike, audio_at, cached, device_name

MOS_WINDOW = 122880  # DistillMOS analyses 7.68 s windows at 16 kHz (shorter clips are zero-padded)


def mos_model(device: str) -> Any:
    """The DistillMOS model on ``device`` ("cpu" or "cuda..."), loaded once per process."""
    def build():
        import contextlib
        import io

        from distillmos import ConvTransformerSQAModel

        with contextlib.redirect_stdout(io.StringIO()):  # it prints where it loaded its weights from
            model = ConvTransformerSQAModel()
        return model.eval().to(device)

    return cached(("distillmos", device_name(device)), build)


def predicted_mos(audio: AudioLike, sr: int | None = None, device: str = "cpu") -> float:
    """DistillMOS predicted mean opinion score of one clip: range [1, 5], HIGHER is better.

    The model (weights shipped in the ``distillmos`` package) runs on 16 kHz audio; it normalises
    the peak itself, so the level of the clip does not matter. NaN for an empty clip; digital
    silence gets 1.0, the floor of the scale.
    """
    import torch

    wav = audio_at(audio, sr, 16000)
    if wav.size == 0 or not np.any(wav):
        return float("nan") if wav.size == 0 else 1.0
    dev = device_name(device)
    model = mos_model(dev)
    with torch.inference_mode():
        score = model(torch.from_numpy(np.ascontiguousarray(wav))[None].to(dev))
    return float(score.reshape(-1)[0].item())


def predicted_mos_batch(
    audios_16k: Sequence[np.ndarray], device: str = "cpu", batch_size: int = 16
) -> list[float]:
    """DistillMOS of many 16 kHz clips: :func:`predicted_mos` per clip, with the
    clips that fit one 7.68 s analysis window scored in batches (identical numbers, fewer calls)."""
    import torch

    out = [float("nan")] * len(audios_16k)
    short = []
    for i, a in enumerate(audios_16k):
        a = np.asarray(a, dtype=np.float32)
        if 0 < a.size <= MOS_WINDOW and np.any(a):
            short.append(i)
        else:
            out[i] = predicted_mos(a, 16000, device)
    if not short:
        return out
    dev = device_name(device)
    model = mos_model(dev)
    for b in range(0, len(short), batch_size):
        idx = short[b : b + batch_size]
        x = np.zeros((len(idx), MOS_WINDOW), np.float32)
        for row, i in enumerate(idx):
            a = np.asarray(audios_16k[i], dtype=np.float32)
            x[row, : a.size] = a
        with torch.inference_mode():
            scores = model(torch.from_numpy(x).to(dev)).reshape(-1).float().cpu().numpy()
        for row, i in enumerate(idx):
            out[i] = float(scores[row])
    return out
