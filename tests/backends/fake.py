"""``FakeBackend``: the smallest real backend, a few hundred torch parameters that implement the whole
contract.

It is registered as "fake" for the test session (tests/conftest.py) and runs every stage the real backends
run: tiny base, features cached by content hash, a real loss that trains (it predicts each clip's log duration
and loudness from its text), checkpoints, resume, evaluation, export and loading the export back.

Its "synthesis" is the base folder's real recording of the sentence (or, for a sentence it has none of, a
voiced tone of a plausible length) plus seeded white noise at ``snr_db`` dB: a buffer of the trained state
(tests set it to make a checkpoint better or worse than the base) moved by up to 1 dB by the trained weights,
so that two models with different weights never render the same audio. Every metric of an evaluation is
computed for real.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from voicetune.audio.io import audio_duration, load_audio
from voicetune.backends.base import Backend, BaseModelError, Batch, FeatureStore, Progress, Waveform
from voicetune.config import BackendOptions, TrainConfig, opt
from voicetune.data.manifest import Clip
from voicetune.utils.io import atomic_torch_save, atomic_write_json, file_sha256

CONFIG = "fake.json"
WEIGHTS = "model.pt"
RECORDINGS = "recordings"
SAMPLE_RATE = 22050
MAX_TEXT = 120


@dataclass
class FakeOptions(BackendOptions):
    """Options of the fake backend (flags ``--<field>``)."""

    energy_weight: float = opt(1.0, "Weight of the loudness error in the total loss.", low=0.0)
    freeze_embedding: bool = opt(False, "Do not train the character embedding.")


class FakeModel(torch.nn.Module):
    """Characters -> (log duration, loudness) of the clip that says them."""

    def __init__(self, dim: int = 16, snr_db: float = 0.0):
        super().__init__()
        self.embed = torch.nn.Embedding(256, dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, 2)
        self.dropout = torch.nn.Dropout(0.1)
        self.register_buffer("snr_db", torch.tensor(float(snr_db)))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) * mask[..., None]
        h = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.head(torch.tanh(self.proj(self.dropout(h))))


def _text_ids(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8"))[:MAX_TEXT] or [32], dtype=torch.long)


class FakeStore(FeatureStore):
    def __init__(self, items: list[dict[str, torch.Tensor]], seconds: list[float], dropped: dict[str, int]):
        self.items, self.seconds, self.dropped = items, seconds, dropped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]

    def lengths(self) -> list[int]:
        return [int(item["ids"].numel()) for item in self.items]

    def durations(self) -> list[float]:
        return list(self.seconds)

    def drop_summary(self) -> dict[str, int]:
        return dict(self.dropped)


class FakeBackend(Backend):
    name = "fake"
    options = FakeOptions
    base_layout = "fake folder: fake.json, model.pt, recordings/"
    loss_parts: ClassVar[dict[str, str]] = {"duration_mse": "dur", "energy_mse": "energy"}
    supports_cuda_graphs = True

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.model: FakeModel | None = None
        self.base_dir: Path | None = None
        self.recordings: dict[str, Path] = {}
        self.max_seconds = 0.0
        self.calls: list[tuple[str, float]] = []  # (text, snr_db) of every synthesis: tests read it
        self.fail_texts: set[str] = set()

    # ------------------------------------------------------------------ class level
    @classmethod
    def make_tiny_base(cls, out: Path, *, corpus_texts: Sequence[str] = (), stats_audio: Sequence[Path] = (),
                       seed: int = 0, recordings: dict[str, Path] | None = None, snr_db: float = 0.0) -> Path:
        """A random FakeModel; ``recordings`` ({text: wav}) are copied in, to be "synthesized" with noise."""
        out = Path(out)
        (out / RECORDINGS).mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        atomic_torch_save(FakeModel(snr_db=snr_db).state_dict(), out / WEIGHTS)
        index = {}
        for text, wav in (recordings or {}).items():
            name = hashlib.sha256(text.encode()).hexdigest()[:16] + ".wav"
            shutil.copyfile(wav, out / RECORDINGS / name)
            index[text] = name
        atomic_write_json(out / CONFIG, {"format": 1, "untrained": True, "recordings": index})
        return out

    @classmethod
    def validate_base_folder(cls, path: Path) -> dict[str, Path]:
        files = {"config": Path(path) / CONFIG, "weights": Path(path) / WEIGHTS}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise BaseModelError(f"{path}: not a fake model folder (missing {missing})")
        return files

    @classmethod
    def is_untrained(cls, path: Path) -> bool:
        return bool(json.loads((Path(path) / CONFIG).read_text()).get("untrained"))

    @classmethod
    def usage(cls) -> list[str]:
        return ["It loads with `FakeBackend().load_base(THIS_FOLDER)` (tests/backends/fake.py)."]

    # ------------------------------------------------------------------ loading
    def load_base(self, path: Path, device: torch.device) -> None:
        files = self.validate_base_folder(Path(path))
        config = json.loads(files["config"].read_text())
        model = FakeModel()
        self._load_state(model, files["weights"])
        self.device, self.base_dir = torch.device(device), Path(path)
        self.model = model.to(self.device)
        self.recordings = {t: Path(path) / RECORDINGS / n for t, n in config.get("recordings", {}).items()}

    @staticmethod
    def _load_state(model: FakeModel, path: Path) -> None:
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise BaseModelError(f"{path}: not a FakeModel state ({e})") from e

    def configure_model(self, cfg: TrainConfig, run_dir: Path | None = None,
                        texts: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        frozen = FakeOptions.of(cfg).freeze_embedding
        self.model.embed.weight.requires_grad_(not frozen)
        return {"trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad)}

    def set_length_limits(self, max_audio_seconds: float = 0.0, max_text_tokens: int = 0) -> None:
        self.max_seconds = float(max_audio_seconds)

    def build_features(self, clips: Sequence[Clip], cache: Path,
                       progress: Progress | None = None) -> FeatureStore:
        """(text ids, [log seconds, loudness]) per clip, cached under ``cache`` by the audio's content
        hash."""
        cache = Path(cache)
        items, seconds, dropped = [], [], {}
        for n, clip in enumerate(clips):
            seconds_i = audio_duration(clip.audio_path)
            if self.max_seconds and seconds_i > self.max_seconds:
                dropped["audio too long"] = dropped.get("audio too long", 0) + 1
                continue
            key = hashlib.sha256(f"{file_sha256(clip.audio_path)}|{clip.text}".encode()).hexdigest()[:24]
            path = cache / f"{key}.pt"
            if not path.is_file():
                audio, _ = load_audio(clip.audio_path, sr=16000)
                loudness = 10 * math.log10(float(np.mean(audio.astype(np.float64) ** 2)) + 1e-10) / 100
                atomic_torch_save({"ids": _text_ids(clip.text),
                                   "target": torch.tensor([math.log(seconds_i), loudness])}, path)
            items.append(torch.load(path, weights_only=True))
            seconds.append(seconds_i)
            if progress:
                progress(n + 1, len(clips), "features")
        return FakeStore(items, seconds, dropped)

    def collate(self, items: list[dict[str, torch.Tensor]]) -> Batch:
        n = max(item["ids"].numel() for item in items)
        ids = torch.stack([F.pad(item["ids"], (0, n - item["ids"].numel())) for item in items])
        mask = torch.stack([(torch.arange(n) < item["ids"].numel()).float() for item in items])
        return {"ids": ids, "mask": mask, "target": torch.stack([item["target"] for item in items])}

    # ------------------------------------------------------------------ training
    def trainable(self) -> torch.nn.Module:
        return self.model

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim > 1]
        return [{"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
                {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "name": "no_decay"}]

    def loss(self, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        pred = self.model(batch["ids"], batch["mask"])
        duration = F.mse_loss(pred[:, 0].float(), batch["target"][:, 0])
        energy = F.mse_loss(pred[:, 1].float(), batch["target"][:, 1])
        total = duration + FakeOptions.of(cfg).energy_weight * energy
        return {"loss": total, "duration_mse": duration.detach(), "energy_mse": energy.detach()}

    def batch_stats(self, batch: Batch) -> dict[str, float]:
        return {"audio_seconds": float(batch["target"][:, 0].exp().sum()),
                "tokens": float(batch["mask"].sum())}

    def graph_inputs(self, batch: Batch) -> dict[str, torch.Tensor] | None:
        return {k: batch[k] for k in ("ids", "mask", "target")}

    def set_train(self, mode: bool) -> None:
        self.model.train(mode)

    # ------------------------------------------------------------------ synthesis
    def _snr_db(self) -> float:
        return float(self.model.snr_db) + math.tanh(float(self.model.head.weight.detach().mean()))

    def synthesize(self, text: str, refs: Sequence[Path], language: str, seed: int) -> Waveform:
        if not refs or not all(Path(r).is_file() for r in refs):
            raise ValueError("synthesize needs existing reference clips")
        snr = self._snr_db()
        self.calls.append((text, round(float(self.model.snr_db), 3)))
        if text in self.fail_texts:
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        if text in self.recordings:
            audio, sr = load_audio(self.recordings[text], sr=SAMPLE_RATE)
        else:  # a voiced tone, 15 characters a second
            sr = SAMPLE_RATE
            t = np.arange(int(sr * max(0.5, len(text) / 15))) / sr
            audio = (0.2 * sum(np.sin(2 * np.pi * 130 * k * t) / k for k in range(1, 6))).astype(np.float32)
        rng = np.random.default_rng(seed * 7919 + zlib.crc32(text.encode()))
        noise = rng.standard_normal(len(audio)).astype(np.float32)
        noise *= np.sqrt(np.mean(audio**2) / 10 ** (snr / 10) / np.mean(noise**2))
        return Waveform(np.clip(audio + noise, -1, 1).astype(np.float32), sr, {"hit_max_length": False})

    # ------------------------------------------------------------------ state and export
    def save(self, path: Path) -> None:
        atomic_torch_save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, Path(path))

    def load_trained(self, path: Path) -> None:
        self._load_state(self.model, Path(path))

    def export(self, out: Path) -> None:
        out = Path(out)
        (out / RECORDINGS).mkdir(parents=True, exist_ok=True)
        self.save(out / WEIGHTS)
        index = {}
        for text, wav in self.recordings.items():
            shutil.copyfile(wav, out / RECORDINGS / wav.name)
            index[text] = wav.name
        atomic_write_json(out / CONFIG, {"format": 1, "untrained": False, "recordings": index})
