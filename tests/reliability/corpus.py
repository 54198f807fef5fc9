"""The generated corpus of bad inputs: each kind is a small function that writes it into a folder.

Audio kinds go into ONE input folder with good recordings beside them, so one `voicetune prepare` run shows at
once that each is named with its reason and that the rest is used. Every builder is deterministic.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050


@dataclass(frozen=True)
class AudioKind:
    """One kind of bad (or awkward) input entry and what prepare must say about it."""

    name: str  # the entry as prepare names it (relative to the input folder)
    build: Callable[[Path, list[Path]], None]  # (input folder, good speech wavs) -> writes the entry
    outcome: str  # "skipped" (result.errors), "no_speech", "not_used" (skipped_inputs), "used", "duplicate"
    reason: str  # regex of the reason


def _copy(i: int, name: str) -> Callable[[Path, list[Path]], None]:
    def build(folder: Path, speech: list[Path]) -> None:
        shutil.copyfile(speech[i], folder / name)

    return build


def _zero_channels(folder: Path, speech: list[Path]) -> None:
    data = bytearray(speech[0].read_bytes())
    data[22:24] = struct.pack("<H", 0)  # WAVE fmt chunk: number of channels
    (folder / "zero_channels.wav").write_bytes(bytes(data))


def _zero_rate(folder: Path, speech: list[Path]) -> None:
    data = bytearray(speech[0].read_bytes())
    data[24:28] = struct.pack("<I", 0)  # WAVE fmt chunk: sample rate
    (folder / "zero_rate.wav").write_bytes(bytes(data))


def _non_utf8_name(folder: Path, speech: list[Path]) -> None:
    shutil.copyfile(speech[2], os.path.join(os.fsencode(folder), b"caf\xe9_latin1_name.wav"))


def _unreadable(folder: Path, speech: list[Path]) -> None:
    shutil.copyfile(speech[3], folder / "unreadable.wav")
    os.chmod(folder / "unreadable.wav", 0)


def _locked_folder(folder: Path, speech: list[Path]) -> None:
    (folder / "locked_folder").mkdir()
    shutil.copyfile(speech[3], folder / "locked_folder" / "inside.wav")
    os.chmod(folder / "locked_folder", 0)


def _write(
    name: str, audio: np.ndarray, subtype: str = "PCM_16", sr: int = SR
) -> Callable[[Path, list[Path]], None]:
    def build(folder: Path, speech: list[Path]) -> None:
        sf.write(folder / name, audio, sr, subtype=subtype)

    return build


def _truncated(folder: Path, speech: list[Path]) -> None:
    """Two sentences with a pause; the file is cut in the middle of the second (its header still announces
    both)."""
    a, _ = sf.read(speech[4], dtype="float32")
    b, _ = sf.read(speech[5], dtype="float32")
    full = np.concatenate([a, np.zeros(SR, np.float32), b])
    path = folder / "truncated.wav"
    sf.write(path, full, SR, subtype="PCM_16")
    data = path.read_bytes()
    header = data.index(b"data") + 8
    path.write_bytes(data[: header + 2 * (len(a) + SR + len(b) // 2)])


def _damaged_flac(folder: Path, speech: list[Path]) -> None:
    a, _ = sf.read(speech[1], dtype="float32")
    sf.write(folder / "damaged.flac", a, SR, format="FLAC")
    data = bytearray((folder / "damaged.flac").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4000] = bytes((i * 7919) % 251 for i in range(4000))  # garbage in the middle
    (folder / "damaged.flac").write_bytes(bytes(data))


def _header_only(folder: Path, speech: list[Path]) -> None:
    sf.write(folder / "header_only.wav", np.zeros(0, np.float32), SR, subtype="PCM_16")


def _nan(folder: Path, speech: list[Path]) -> None:
    audio = np.full(SR, np.nan, np.float32)
    sf.write(folder / "nan_samples.wav", audio, SR, subtype="FLOAT")


def _garbage_mp3(folder: Path, speech: list[Path]) -> None:
    rng = np.random.default_rng(11)
    (folder / "garbage.mp3").write_bytes(rng.integers(0, 256, 6000, dtype=np.uint8).tobytes())


def _id3_only(folder: Path, speech: list[Path]) -> None:
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"TIT2\x00\x00\x00\x00\x00\x00"  # a tag, then no audio frames
    (folder / "id3_only.mp3").write_bytes(tag)


def _text_as_wav(folder: Path, speech: list[Path]) -> None:
    (folder / "text_as_audio.wav").write_text("These are meeting notes saved with the wrong extension.\n")


def _empty(folder: Path, speech: list[Path]) -> None:
    (folder / "empty.wav").write_bytes(b"")


def _dangling(folder: Path, speech: list[Path]) -> None:
    os.symlink(folder / "deleted_recording.wav", folder / "dangling.wav")


def _loop(folder: Path, speech: list[Path]) -> None:
    os.symlink(folder / "loop_b.wav", folder / "loop_a.wav")
    os.symlink(folder / "loop_a.wav", folder / "loop_b.wav")


def _fifo(folder: Path, speech: list[Path]) -> None:
    os.mkfifo(folder / "pipe.wav")


def _hidden(folder: Path, speech: list[Path]) -> None:
    shutil.copyfile(speech[0], folder / "._resource_fork.wav")


def _notes(folder: Path, speech: list[Path]) -> None:
    (folder / "notes.txt").write_text("take 3 was the best\n")


def _wav_named_flac(folder: Path, speech: list[Path]) -> None:
    audio, sr = sf.read(speech[1], dtype="float32")
    sf.write(
        folder / "really_a_wav.flac", 0.7 * audio, sr, format="WAV", subtype="PCM_16"
    )  # WAV data, .flac name


_RNG = np.random.default_rng(5)
AUDIO_KINDS = [
    AudioKind("zero_channels.wav", _zero_channels, "skipped", r"0 channel"),
    AudioKind("zero_rate.wav", _zero_rate, "skipped", r"0 Hz|sample ?rate|not a readable audio file"),
    AudioKind("caf\\xe9_latin1_name.wav", _non_utf8_name, "used", r""),
    AudioKind("unreadable.wav", _unreadable, "skipped", r"permission denied"),
    AudioKind("locked_folder/", _locked_folder, "not_used", r"cannot read this folder.*permission denied"),
    AudioKind(
        "one_sample.wav", _write("one_sample.wav", np.full(1, 0.1, np.float32)), "no_speech", r"too short"
    ),
    AudioKind(
        "short_0.2s.wav",
        _write("short_0.2s.wav", (0.3 * np.sin(np.arange(SR // 5) / 3.0)).astype(np.float32)),
        "no_speech",
        r"too short \(0\.20 s",
    ),
    AudioKind(
        "silence_10s.wav", _write("silence_10s.wav", np.zeros(10 * SR, np.float32)), "no_speech", r"silent"
    ),
    AudioKind(
        "noise_10s.wav",
        _write("noise_10s.wav", (0.3 * _RNG.standard_normal(10 * SR)).astype(np.float32)),
        "no_speech",
        r"no speech found",
    ),
    AudioKind(
        "truncated.wav",
        _truncated,
        "used",
        r"truncated: the header announces [\d.]+ s of audio, the file "
        r"holds [\d.]+ s",
    ),
    AudioKind("damaged.flac", _damaged_flac, "skipped", r"damaged|cannot decode|not a readable"),
    AudioKind("header_only.wav", _header_only, "skipped", r"no samples"),
    AudioKind("nan_samples.wav", _nan, "skipped", r"NaN"),
    AudioKind("garbage.mp3", _garbage_mp3, "skipped", r"not a readable audio file"),
    AudioKind("id3_only.mp3", _id3_only, "skipped", r"not a readable audio file|no samples|no audio"),
    AudioKind("text_as_audio.wav", _text_as_wav, "skipped", r"not a readable audio file"),
    AudioKind("empty.wav", _empty, "skipped", r"empty"),
    AudioKind(
        "dangling.wav", _dangling, "not_used", r"dangling symlink.*deleted_recording\.wav does not exist"
    ),
    AudioKind("loop_a.wav", _loop, "not_used", r"symlink loop"),
    AudioKind("pipe.wav", _fifo, "not_used", r"not a regular file"),
    AudioKind("._resource_fork.wav", _hidden, "not_used", r"hidden"),
    AudioKind("notes.txt", _notes, "not_used", r"not an audio file by its extension \(\.txt"),
    AudioKind("good_0_copy.wav", _copy(0, "good_0_copy.wav"), "duplicate", r"same audio as good_0\.wav"),
    AudioKind("really_a_wav.flac", _wav_named_flac, "used", r""),
]
GOOD = ("good_0.wav", "good_1.wav")


def write_audio_corpus(folder: Path, speech: list[Path]) -> None:
    """The input folder of the audio corpus: two good recordings and every kind of :data:`AUDIO_KINDS`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        shutil.copyfile(speech[i], folder / name)
    for kind in AUDIO_KINDS:
        kind.build(folder, speech)


def restore_permissions(folder: Path) -> None:
    """Make the deliberately unreadable entries readable again (so that pytest can clean up)."""
    for p in (folder / "unreadable.wav", folder / "locked_folder"):
        if p.exists():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
