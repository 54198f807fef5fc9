"""The tiny XTTS base: untrained and labelled so, small, consistent, and readable by coqui-tts."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from voicetune.backends.xtts import layout
from voicetune.backends.xtts.tiny import TINY_NOTE, XTTS_LANGUAGES, compute_mel_stats, make_tiny_xtts_base


def test_config_says_untrained_and_the_maker_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        out = make_tiny_xtts_base(tmp_path / "tiny", corpus_texts=["Hello world."], seed=1)
    cfg = json.loads((out / layout.CONFIG).read_text())
    assert cfg["voicetune_note"] == TINY_NOTE and "UNTRAINED" in cfg["voicetune_note"]
    assert cfg["voicetune"]["tiny"] is True
    assert "UNTRAINED" in caplog.text
    assert set(layout.validate_base_dir(out)) == set(layout.LAYOUT_FILES)


def test_vocab_has_the_xtts_special_tokens_and_encodes_english_without_unk(xtts_base, xtts_speech):
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    tok = VoiceBpeTokenizer(vocab_file=str(xtts_base / layout.VOCAB))
    ids = {t: tok.tokenizer.token_to_id(t) for t in ("[STOP]", "[UNK]", "[SPACE]", "[START]")}
    assert ids["[STOP]"] == 0 and ids["[UNK]"] == 1 and ids["[SPACE]"] == 2 and ids["[START]"] is not None
    assert all(tok.tokenizer.token_to_id(f"[{lang}]") is not None for lang in XTTS_LANGUAGES)
    assert 100 <= tok.get_number_tokens() <= 512
    for _, text in xtts_speech + [
        (None, "It's 42 degrees; isn't that odd? Dr. Smith said: \"yes\" (twice)!")
    ]:
        encoded = tok.encode(text, "en")
        assert 1 not in encoded and 0 not in encoded
        assert tok.decode(encoded).startswith("[en]")


def test_model_is_tiny_and_its_sizes_are_consistent(xtts_base):
    cfg = layout.load_config(xtts_base / layout.CONFIG)
    args = cfg.model_args
    state = layout.load_model_state(xtts_base / layout.MODEL)
    gpt_params = sum(v.numel() for k, v in state.items() if k.startswith("gpt."))
    assert gpt_params < 2_000_000
    assert args.decoder_input_dim == args.gpt_n_model_channels
    dvae = layout.load_dvae(xtts_base / layout.DVAE, expected_tokens=args.gpt_num_audio_tokens - 2)
    assert (
        dvae.num_tokens == 1024 and args.gpt_start_audio_token == 1024 and args.gpt_stop_audio_token == 1025
    )
    mel_stats = layout.load_mel_stats(xtts_base / layout.MEL_STATS)
    assert torch.equal(state["mel_stats"], mel_stats)  # the buffer in model.pth is the file's copy


def test_mel_stats_come_from_the_given_audio(xtts_speech):
    from_speech = compute_mel_stats([p for p, _ in xtts_speech])
    from_noise = compute_mel_stats(None, seed=0)
    assert from_speech.shape == (80,) and (from_speech < 0).all()
    assert not torch.allclose(from_speech, from_noise, atol=0.1)
    assert torch.equal(from_noise, compute_mel_stats(None, seed=0))


def test_speakers_file_has_the_coqui_format(xtts_base):
    from TTS.tts.layers.xtts.xtts_manager import SpeakerManager

    manager = SpeakerManager(xtts_base / layout.SPEAKERS)
    assert manager.num_speakers == 1
    (voice,) = manager.speakers.values()
    dim = layout.load_config(xtts_base / layout.CONFIG).model_args.gpt_n_model_channels
    assert list(voice) == ["gpt_cond_latent", "speaker_embedding"]  # Xtts.synthesize unpacks .values()
    assert voice["gpt_cond_latent"].shape == (1, 32, dim) and voice["speaker_embedding"].shape == (1, 512, 1)


def test_same_arguments_give_the_same_files_and_another_seed_does_not(xtts_base, xtts_speech, tmp_path):
    from voicetune.utils.io import file_sha256

    kw = {"corpus_texts": [t for _, t in xtts_speech], "stats_audio": [p for p, _ in xtts_speech]}
    again = make_tiny_xtts_base(tmp_path / "again", seed=0, **kw)
    other = make_tiny_xtts_base(tmp_path / "other", seed=1, **kw)
    for name in (layout.CONFIG, layout.VOCAB):
        assert file_sha256(again / name) == file_sha256(xtts_base / name), name
    for name in (layout.MODEL, layout.DVAE, layout.MEL_STATS, layout.SPEAKERS):
        # torch.save names the archive after the (temporary) file, so compare the contents
        x, y = (torch.load(p / name, weights_only=True) for p in (again, xtts_base))
        assert _flat(x).keys() == _flat(y).keys() and all(
            torch.equal(_flat(x)[k], _flat(y)[k]) for k in _flat(x)
        )
    a, c = (layout.load_model_state(p / layout.MODEL) for p in (xtts_base, other))
    key = "gpt.gpt.h.0.attn.c_attn.weight"
    assert not torch.equal(a[key], c[key])


def _flat(obj, prefix=""):
    if torch.is_tensor(obj):
        return {prefix: obj}
    return {k2: v2 for k, v in obj.items() for k2, v2 in _flat(v, f"{prefix}/{k}").items()}


def test_make_tiny_base_dispatches_by_backend_and_rejects_unknown_ones(tmp_path):
    import voicetune

    with pytest.raises(ValueError, match="unknown backend 'nope'; choose one of .* with --backend"):
        voicetune.make_tiny_base("nope", tmp_path / "x")
