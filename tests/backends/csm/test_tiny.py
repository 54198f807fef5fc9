"""The tiny CSM base: the Hugging Face layout transformers loads, a local tokenizer for any script, and a Mimi
whose codebooks are not degenerate."""

from __future__ import annotations

import json

import pytest
import torch

from voicetune.audio.io import load_audio
from voicetune.backends.csm import layout
from voicetune.backends.csm.tiny import make_tiny_csm_base
from voicetune.data.manifest import Dataset


def test_the_tiny_base_is_a_hub_layout_that_transformers_loads_and_says_it_is_untrained(csm_base):
    from transformers import AutoProcessor, CsmForConditionalGeneration, CsmProcessor

    from voicetune.backends.registry import backend_class

    files = layout.validate_base_dir(csm_base)
    assert {"config", "weights", "tokenizer", "preprocessor"} <= set(files)
    assert backend_class("csm").is_untrained(csm_base)
    assert "UNTRAINED" in json.loads((csm_base / layout.SIDECAR).read_text())["note"]
    model = CsmForConditionalGeneration.from_pretrained(csm_base)
    processor = AutoProcessor.from_pretrained(csm_base)
    assert isinstance(processor, CsmProcessor)
    assert model.config.codec_config.num_quantizers == model.config.num_codebooks == 8
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids("<|AUDIO|>") == model.config.audio_token_id
    assert tok.convert_tokens_to_ids("<|audio_eos|>") == model.config.audio_eos_token_id


@pytest.mark.parametrize(
    "text", ["¿Dónde está la estación?", "Привет, как дела?", "東京は晴れです。", "ÀÉÎÕÜ ñ ç ß"]
)
def test_the_local_tokenizer_encodes_any_script_without_unknown_tokens(csm_base, text):
    from transformers import AutoProcessor

    tok = AutoProcessor.from_pretrained(csm_base).tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text  # byte-level: every character round-trips


def _distinct_per_codebook(codec, audio) -> list[int]:
    with torch.no_grad():
        codes = codec.encode(torch.from_numpy(audio)[None, None]).audio_codes[0]
    return [int(c.unique().numel()) for c in codes]


def test_mimi_codebooks_fitted_to_speech_use_many_codes_where_random_ones_use_one(csm_base, spanish_dataset,
                                                                                  piper_sentences):
    from transformers import CsmForConditionalGeneration, MimiModel

    model = CsmForConditionalGeneration.from_pretrained(csm_base)
    size = model.config.codec_config.codebook_size
    held_out = [load_audio(c.audio_path, sr=24000)[0] for c in Dataset.load(spanish_dataset).eval]
    held_out.append(load_audio(piper_sentences[0][0], sr=24000)[0])  # another language and voice
    for audio in held_out:
        used = _distinct_per_codebook(model.codec_model, audio)
        assert len(used) == 8 and min(used) >= size // 6, used
    random_codec = MimiModel(model.config.codec_config).eval()  # what a random initialisation gives
    assert _distinct_per_codebook(random_codec, held_out[0]) == [1] * 8


def test_make_tiny_base_refuses_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me")
    from voicetune.backends.tiny import make_tiny_base

    with pytest.raises(ValueError, match="todo.txt"):
        make_tiny_base("csm", mine)
    assert (mine / "todo.txt").read_text() == "keep me"


def test_without_a_dataset_the_codebooks_are_fitted_to_espeak_speech(tmp_path):
    import shutil as sh

    if sh.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    base = make_tiny_csm_base(tmp_path / "base")
    distinct = json.loads((base / layout.SIDECAR).read_text())["codebook_distinct_codes"]
    assert len(distinct) == 8 and min(distinct.values()) >= 32  # of 64: every level spreads over the speech
