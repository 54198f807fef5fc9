"""XttsBackend: the GPT learns, its state round-trips, synthesis is seeded, the export loads in coqui-tts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voicetune.backends.base import Backend, BaseModelError, get_backend
from voicetune.backends.registry import train_config as TrainConfig  # flat options, the XTTS ones included
from voicetune.backends.xtts import layout

from ._helpers import synthetic_speechlike

TEXT = "Hello there, this is a test."


@pytest.fixture
def batch(xtts_backend, xtts_clips, tmp_path):
    store = xtts_backend.build_features(xtts_clips[:2], tmp_path / "features")
    return xtts_backend.collate([store[0], store[1]])


def _adamw_steps(backend, batch, cfg, steps):
    opt = torch.optim.AdamW(backend.param_groups(cfg), lr=cfg.lr, betas=tuple(cfg.betas))
    losses = []
    for _ in range(steps):
        out = backend.loss(batch, cfg)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append({k: v.item() for k, v in out.items()})
    return losses


def test_backend_implements_the_protocol_and_trains_only_the_gpt(xtts_backend):
    assert isinstance(xtts_backend, Backend) and xtts_backend.name == "xtts"
    gpt = xtts_backend.trainable()
    assert gpt is xtts_backend.model.gpt
    assert all(p.requires_grad for p in gpt.parameters())
    assert not any(p.requires_grad for p in xtts_backend.model.hifigan_decoder.parameters())


def test_loss_is_finite_and_decreases_on_a_repeated_batch(xtts_backend, batch):
    cfg = TrainConfig(lr=1e-3)
    losses = _adamw_steps(xtts_backend, batch, cfg, 20)
    assert all(np.isfinite(list(x.values())).all() for x in losses)
    first, last = losses[0], losses[-1]
    assert last["loss"] < 0.7 * first["loss"]
    assert last["mel_ce"] < first["mel_ce"] and last["text_ce"] < first["text_ce"]


def test_loss_weights_the_two_cross_entropies_by_the_config(xtts_backend, batch):
    cfg = TrainConfig(text_ce_weight=0.25, mel_ce_weight=2.0)
    torch.manual_seed(0)
    out = xtts_backend.loss(batch, cfg)
    assert set(out) == {"loss", "text_ce", "mel_ce"}
    torch.testing.assert_close(out["loss"].detach(), 0.25 * out["text_ce"] + 2.0 * out["mel_ce"])
    assert out["loss"].requires_grad and not out["mel_ce"].requires_grad


def test_param_groups_decay_weight_matrices_only_and_cover_every_parameter(xtts_backend):
    cfg = TrainConfig(weight_decay=0.05)
    decay, no_decay = xtts_backend.param_groups(cfg)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    gpt = xtts_backend.trainable()
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(gpt.parameters()))
    decayed = {id(p) for p in decay["params"]}
    assert id(gpt.mel_head.weight) in decayed and id(gpt.gpt.h[0].attn.c_attn.weight) in decayed
    for p in (
        gpt.mel_head.bias,
        gpt.final_norm.weight,
        gpt.text_embedding.weight,
        gpt.mel_pos_embedding.emb.weight,
    ):
        assert id(p) not in decayed
    assert all(p.ndim >= 2 for p in decay["params"])


def test_save_then_load_trained_round_trips_bit_exactly(xtts_backend, xtts_base, batch, tmp_path):
    _adamw_steps(xtts_backend, batch, TrainConfig(lr=1e-3), 2)
    xtts_backend.save(tmp_path / "ckpt" / "trainable.pt")
    saved = torch.load(tmp_path / "ckpt" / "trainable.pt", weights_only=True)
    assert not any(k.startswith(layout.INFERENCE_ONLY_GPT_PREFIXES) for k in saved)
    fresh = get_backend("xtts")
    fresh.load_base(xtts_base, torch.device("cpu"))
    assert not torch.equal(fresh.model.gpt.mel_head.weight, xtts_backend.model.gpt.mel_head.weight)
    fresh.load_trained(tmp_path / "ckpt" / "trainable.pt")
    ours, theirs = xtts_backend.model.gpt.state_dict(), fresh.model.gpt.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # no temp files left
    assert list(tmp_path.joinpath("ckpt").iterdir()) == [tmp_path / "ckpt" / "trainable.pt"]


def test_load_trained_rejects_a_state_of_another_model(xtts_backend, tmp_path):
    torch.save({"mel_head.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(BaseModelError, match="bad.pt"):
        xtts_backend.load_trained(tmp_path / "bad.pt")


def test_evaluation_in_between_keeps_training_and_saved_keys_unchanged(
    xtts_backend, xtts_clips, batch, tmp_path
):
    cfg = TrainConfig(lr=1e-3)
    xtts_backend.set_train(True)
    keys = set(xtts_backend.trainable().state_dict())
    torch.manual_seed(5)
    before = xtts_backend.loss(batch, cfg)["loss"].item()

    xtts_backend.set_train(False)
    assert hasattr(xtts_backend.model.gpt, "gpt_inference")
    xtts_backend.synthesize(TEXT, [xtts_clips[0].audio_path], "en", seed=0)
    xtts_backend.set_train(True)

    assert set(xtts_backend.trainable().state_dict()) == keys
    assert xtts_backend.trainable().training
    torch.manual_seed(5)
    assert xtts_backend.loss(batch, cfg)["loss"].item() == before  # same weights, same dropout: same loss
    losses = _adamw_steps(xtts_backend, batch, cfg, 3)
    assert losses[-1]["loss"] < losses[0]["loss"]
    xtts_backend.save(tmp_path / "t.pt")
    assert set(torch.load(tmp_path / "t.pt", weights_only=True)) == keys


def test_synthesize_is_24k_float32_bounded_and_seeded(xtts_shared_backend, xtts_clips):
    b, refs = xtts_shared_backend, [c.audio_path for c in xtts_clips[:2]]
    b.set_train(False)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    wav = b.synthesize(TEXT, refs, "en", seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    cap = wav.meta["max_audio_tokens"]
    assert cap == 48  # the tiny model's synthesis cap from config.json
    assert wav.sample_rate == 24000 and wav.audio.dtype == np.float32 and wav.audio.ndim == 1
    assert 0.1 < wav.duration <= cap * 1024 / 22050 + 0.1
    assert 0 < wav.meta["num_tokens"] <= cap and isinstance(wav.meta["hit_max_length"], bool)
    assert np.abs(wav.audio).max() <= 1.0 and np.abs(wav.audio).max() > 0
    again = b.synthesize(TEXT, refs, "en", seed=0)
    assert np.array_equal(wav.audio, again.audio)
    other = b.synthesize(TEXT, refs, "en", seed=1)
    assert not np.array_equal(wav.audio[: len(other.audio)], other.audio[: len(wav.audio)])


def test_synthesize_explains_bad_input(xtts_shared_backend, xtts_clips, tmp_path):
    b, ref = xtts_shared_backend, [xtts_clips[0].audio_path]
    with pytest.raises(ValueError, match="at least one reference"):
        b.synthesize(TEXT, [], "en", 0)
    with pytest.raises(ValueError, match="language 'xx' is not supported"):
        b.synthesize(TEXT, ref, "xx", 0)
    short = synthetic_speechlike(tmp_path / "short.wav", 0.2, 120.0)
    with pytest.raises(ValueError, match="short.wav"):
        b.synthesize(TEXT, [short], "en", 0)


def test_long_text_is_split_into_pieces_under_the_character_limit(xtts_shared_backend):
    text = " ".join(["This sentence is here to make the text long enough to need splitting."] * 8)
    pieces = xtts_shared_backend._split(text, "en")
    assert len(pieces) > 1 and all(len(p) <= 250 for p in pieces)
    assert " ".join(pieces) == text


def test_export_loads_unchanged_in_coqui_tts_and_speaks_like_the_backend(
    xtts_backend, xtts_clips, batch, tmp_path
):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    from voicetune.backends.xtts.features import load_wav_tensor

    _adamw_steps(xtts_backend, batch, TrainConfig(lr=1e-3), 2)
    xtts_backend.set_train(False)
    out = tmp_path / "package"
    xtts_backend.export(out)
    assert set(layout.validate_base_dir(out)) == set(layout.LAYOUT_FILES)

    config = XttsConfig()
    config.load_json(str(out / layout.CONFIG))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(out), strict=True, eval=True)
    trained = xtts_backend.model.gpt.state_dict()
    loaded = model.gpt.state_dict()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)

    ref = xtts_clips[0].audio_path
    ours = xtts_backend.synthesize(TEXT, [ref], "en", seed=7)
    audio = load_wav_tensor(ref, 22050)[:, : 22050 * config.max_ref_len]
    latents = model.get_gpt_cond_latents(
        audio, 22050, length=config.gpt_cond_len, chunk_length=config.gpt_cond_chunk_len
    )
    speaker = model.get_speaker_embedding(audio, 22050)
    model.gpt.max_gen_mel_tokens = ours.meta["max_audio_tokens"]
    torch.manual_seed(7)
    theirs = model.inference(
        TEXT,
        "en",
        latents,
        speaker,
        temperature=config.temperature,
        length_penalty=config.length_penalty,
        repetition_penalty=config.repetition_penalty,
        top_k=config.top_k,
        top_p=config.top_p,
    )["wav"]
    np.testing.assert_array_equal(ours.audio, np.clip(theirs, -1, 1).astype(np.float32))
    assert "Tiny Random" in model.speaker_manager.speakers  # speakers_xtts.pth came along


def test_export_never_writes_onto_the_base_folder(xtts_shared_backend, xtts_base):
    with pytest.raises(ValueError, match="refusing to export onto the base"):
        xtts_shared_backend.export(xtts_base)


@pytest.mark.gpu
def test_loss_under_bf16_autocast_on_cuda(xtts_base, xtts_clips, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    b = get_backend("xtts")
    b.load_base(xtts_base, torch.device("cuda"))
    store = b.build_features(xtts_clips[:2], tmp_path / "f")
    batch = {k: v.cuda() for k, v in b.collate([store[0], store[1]]).items()}
    opt = torch.optim.AdamW(b.param_groups(TrainConfig()), lr=1e-3)
    losses = []
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = b.loss(batch, TrainConfig())
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(out["loss"].item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    b.set_train(False)
    wav = b.synthesize(TEXT, [xtts_clips[0].audio_path], "en", seed=0)
    assert wav.duration > 0.1 and np.isfinite(wav.audio).all()
