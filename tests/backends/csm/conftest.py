"""Fixtures of the CSM backend tests: a Spanish dataset spoken by espeak-ng, and a tiny CSM base built from
it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SPANISH = [
    "El perro de mi vecino ladra todas las noches.",
    "¿Dónde has puesto las llaves del coche?",
    "Mañana iremos al mercado a comprar fruta fresca.",
    "La película empezó a las ocho y media.",
    "Hace mucho calor en el verano de Sevilla.",
    "Me gustaría un café con leche, por favor.",
]


def write_spanish_dataset(root: Path, n_train: int = 4) -> Path:
    """A dataset of the SPANISH sentences (espeak-ng's Spanish voice), speaker "ana", language es."""
    from voicetune.data.manifest import write_metadata_csv

    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; `make setup` does it)")
    (root / "wavs").mkdir(parents=True)
    rows = []
    for i, text in enumerate(SPANISH):
        wav = root / "wavs" / f"es_{i:02d}.wav"
        subprocess.run([exe, "-v", "es", "-s", "150", "-w", str(wav), text], check=True, capture_output=True)
        rows.append((f"wavs/{wav.name}", text, "ana"))
    write_metadata_csv(root / "metadata_train.csv", rows[:n_train])
    write_metadata_csv(root / "metadata_eval.csv", rows[n_train:])
    (root / "prepare.yaml").write_text("language: es\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def spanish_dataset(tmp_path_factory) -> Path:
    """4 train + 2 eval clips of Spanish speech (read-only: tests must not change it)."""
    return write_spanish_dataset(tmp_path_factory.mktemp("spanish_dataset"))


@pytest.fixture(scope="session")
def csm_base(spanish_dataset, tmp_path_factory) -> Path:
    """An UNTRAINED tiny CSM base: tokenizer from the Spanish transcripts, Mimi codebooks fitted to their
    audio."""
    from voicetune.backends.tiny import make_tiny_base

    return make_tiny_base(
        "csm", tmp_path_factory.mktemp("csm_base") / "base", dataset=spanish_dataset, seed=0
    )
