"""The dataset folder on disk, as every stage reads it.

Layout (Coqui/AllTalk compatible)::

    DATASET_DIR/
      wavs/*.wav               mono clips at PrepareConfig.sample_rate
      metadata_train.csv       audio_file|text|speaker_name   (header line, '|' separated)
      metadata_eval.csv        same columns
      clips.jsonl              one ClipRecord per line (kept and quarantined clips)
      prepare.yaml             the PrepareConfig that produced it
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetune.utils.io import atomic_write_text
from voicetune.utils.paths import UnsafePathError, inside

METADATA_HEADER = ["audio_file", "text", "speaker_name"]


class DatasetError(ValueError):
    """The dataset folder is missing something or is malformed; the message names the file."""


@dataclass
class ClipRecord:
    """One clip: where it came from, what was said, and whether it is used."""

    id: str
    audio_file: str  # relative to the dataset folder, e.g. "wavs/talk_0003.wav"
    source_file: str
    start: float
    end: float
    duration: float
    text: str
    language: str
    speaker: str = "speaker"
    split: str = "train"  # "train" | "eval" | "" (quarantined clips have no split)
    status: str = "kept"  # "kept" | "quarantined"
    reasons: list[str] = field(default_factory=list)
    raw_text: str = ""
    asr: dict[str, Any] = field(default_factory=dict)  # model, avg_logprob, no_speech_prob, ...
    quality: dict[str, Any] = field(default_factory=dict)
    needs_review: bool = False  # the transcript is uncertain: a person should listen (reasons say why)
    manual: str = ""  # "restored" / "quarantined" when a person decided (voicetune dataset ...)
    source_sha256: str = ""  # content hash of the source file (cache and curation key)
    audio_key: str = ""  # what the wav was made from (source, span, rate, loudness): reused when unchanged

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClipRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Clip:
    """A training/eval clip as the backends see it."""

    audio_path: Path
    text: str
    speaker: str
    language: str = "en"


def write_metadata_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="|", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    w.writerow(METADATA_HEADER)
    for row in rows:
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def read_metadata_csv(path: Path) -> list[tuple[str, str, str]]:
    return [row for _, row in read_metadata_rows(path)]


def read_metadata_rows(path: Path) -> list[tuple[int, tuple[str, str, str]]]:
    """(line number, (audio_file, text, speaker)) of every row of a metadata CSV."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing (run `voicetune prepare` to create the dataset)")
    rows = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="|")
            for i, row in enumerate(reader):
                if i == 0 and [c.strip() for c in row] == METADATA_HEADER:
                    continue
                if not row:
                    continue
                if len(row) < 2:
                    raise DatasetError(f"{path}:{reader.line_num}: expected 'audio_file|text|speaker_name', "
                                       f"got {row!r}")
                speaker = row[2] if len(row) > 2 else "speaker"
                rows.append((reader.line_num, (row[0], row[1], speaker)))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e}); save it as UTF-8, or import the folder with "
                           "`voicetune dataset import`") from None
    except csv.Error as e:
        raise DatasetError(f"{path}: not a '|'-separated metadata file ({e})") from None
    return rows


def write_clips_jsonl(path: Path, records: list[ClipRecord]) -> None:
    atomic_write_text(
        path, "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n" for r in records)
    )


def read_clips_jsonl(path: Path) -> list[ClipRecord]:
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(ClipRecord.from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as e:
                raise DatasetError(f"{path}:{n}: malformed record ({e})") from e
    return out


@dataclass
class Dataset:
    """A prepared dataset folder: train and eval clips with absolute audio paths."""

    root: Path
    train: list[Clip]
    eval: list[Clip]
    language: str = "en"

    @classmethod
    def load(cls, root: Path | str, language: str | None = None) -> Dataset:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder does not exist")
        lang = language or _dataset_language(root)

        def clips(csv_name: str) -> list[Clip]:
            out = []
            for line, (audio, text, spk) in read_metadata_rows(root / csv_name):
                try:
                    p = inside(root, audio, f"{root / csv_name}:{line}")
                except UnsafePathError as e:
                    raise DatasetError(str(e)) from None
                if not p.is_file():
                    raise DatasetError(f"{root / csv_name}:{line}: audio file {audio} does not exist")
                out.append(Clip(p, text, spk, lang))
            return out

        train, ev = clips("metadata_train.csv"), clips("metadata_eval.csv")
        if not train:
            raise DatasetError(f"{root / 'metadata_train.csv'}: no training clips")
        return cls(root, train, ev, lang)

    @property
    def speakers(self) -> list[str]:
        return sorted({c.speaker for c in self.train + self.eval})


def _dataset_language(root: Path) -> str:
    cfg = root / "prepare.yaml"
    if cfg.is_file():
        import yaml

        try:
            lang = (yaml.safe_load(cfg.read_text()) or {}).get("language")
            if isinstance(lang, str) and lang:
                return lang
        except yaml.YAMLError:
            pass
    return "en"
