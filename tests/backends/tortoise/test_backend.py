"""The Tortoise backend: the ai-voice-cloning controls and their defaults, features computed once, what
trains, checkpoints, the synthesis chain and its presets, and an export that coqui-tts's Tortoise loads."""

from __future__ import annotations

import pytest
import torch

from voicetune.backends.base import BaseModelError, get_backend
from voicetune.backends.registry import train_config
from voicetune.backends.tortoise import layout
from voicetune.backends.tortoise.options import TortoiseOptions
from voicetune.config import ConfigError


def test_the_wiki_controls_have_ai_voice_cloning_defaults():
    cfg = train_config(backend="tortoise")
    opts = cfg.backend_options
    assert isinstance(opts, TortoiseOptions)
    assert (opts.text_ce_weight, opts.mel_ce_weight, opts.text_lr_weight, opts.mel_lr_weight) == (
        0.01,
        1.0,
        0.01,
        1.0,
    )
    assert (cfg.lr, cfg.scheduler, cfg.milestone_unit, cfg.lr_gamma) == (1e-5, "multistep", "epochs", 0.5)
    assert cfg.milestones == [2, 4, 9, 18, 25, 33, 50]
    assert (cfg.betas, cfg.weight_decay, cfg.grad_clip, cfg.optimizer) == ([0.9, 0.96], 0.01, 4.0, "adamw")
    language = train_config(backend="tortoise", text_lr_weight=1.0, mel_lr_weight=0.01, grad_clip=1.0)
    assert (language.backend_options.text_lr_weight, language.grad_clip) == (1.0, 1.0)
    with pytest.raises(ConfigError, match="--text-lr-weight"):
        train_config(backend="tortoise", text_lr_weight=0.0)
    with pytest.raises(ConfigError, match="--freeze"):
        train_config(backend="tortoise", freeze="conditioning_perceiver")  # XTTS's part, not Tortoise's


def test_train_help_documents_the_wiki_controls(capsys):
    from voicetune.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--backend", "tortoise", "--help"])
    text = capsys.readouterr().out
    for words in (
        "--text-lr-weight 1 --mel-lr-weight 0.01",
        "--milestones 2 4 9 18 25 33 50",
        "--grad-clip 4",
        "--betas 0.9 0.96",
        "11.6 s at 22.05 kHz",
        "--resume",
        "--gpus N",
        "voicetune Tortoise export",
        "--text-ce-weight",
        "--mel-ce-weight",
    ):
        assert words in text, words
    flat = " ".join(text.split())
    assert "new language" in flat and "(default: 0.01)" in flat


def test_param_groups_scale_the_text_and_mel_sides_by_their_lr_weights(tortoise_backend):
    # a new English voice: text x 0.01, mel x 1 (the rest's LR)
    cfg = train_config(backend="tortoise", lr=1e-4)
    groups = {g["name"]: g for g in tortoise_backend.param_groups(cfg)}
    assert set(groups) == {"decay", "no_decay", "text/decay", "text/no_decay"}
    assert groups["text/decay"]["lr"] == pytest.approx(1e-6) and "lr" not in groups["decay"]
    language = train_config(backend="tortoise", lr=1e-4, text_lr_weight=1.0, mel_lr_weight=0.01)
    mel = {g["name"]: g for g in tortoise_backend.param_groups(language)}
    assert set(mel) == {"decay", "no_decay", "mel/decay", "mel/no_decay"} and mel["mel/decay"][
        "lr"
    ] == pytest.approx(1e-6)
    names = {id(p): n for n, p in tortoise_backend.gpt.named_parameters()}
    text = {names[id(p)] for g in ("text/decay", "text/no_decay") for p in groups[g]["params"]}
    assert text == {
        "text_embedding.weight",
        "text_pos_embedding.emb.weight",
        "text_head.weight",
        "text_head.bias",
    }
    every = [p for g in groups.values() for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == sum(1 for _ in tortoise_backend.gpt.parameters())
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.01


def test_features_are_computed_once_and_conditioning_comes_from_the_speakers_other_clips(
        tortoise_backend, tortoise_clips, tmp_path):
    b = tortoise_backend
    store = b.build_features(tortoise_clips, tmp_path / "features")
    assert store.computed == len(tortoise_clips) and len(store) == len(tortoise_clips)
    again = b.build_features(tortoise_clips, tmp_path / "features")
    assert again.computed == 0 and again.reused == len(tortoise_clips)
    item = store[0]
    assert item["cond_mels"].shape == (2, 80, 176)  # 2 crops of 44,000 samples (172 frames, padded to 176)
    mels = [torch.load(f, weights_only=True)["mel"] for f in store.files]
    crop = item["cond_mels"][0]
    frames = min(172, mels[1].shape[1])
    assert any(
        torch.equal(crop[:, :frames], mels[1][:, s : s + frames])
        for s in range(mels[1].shape[1] - frames + 1)
    )
    others = [
        [j for j in range(len(tortoise_clips)) if j != i and (j < 2) == (i < 2)] for i in range(len(store))
    ]
    assert store._others == others  # speaker a: clips 0 and 1; speaker b: the rest
    store.set_epoch(1)
    first = store[2]["cond_mels"]
    store.forget([2])
    assert torch.equal(store[2]["cond_mels"], first)  # a redone step draws the same crops


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for running code from a cache file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cache_files_that_would_run_code_are_recomputed_not_loaded(tortoise_shared_backend, tortoise_clips,
                                                                    tmp_path, caplog):
    b, cache = tortoise_shared_backend, tmp_path / "features"
    first = b.build_features(tortoise_clips, cache)
    marker = tmp_path / "PWNED"
    for f in first.files:
        torch.save({"version": _Payload(marker), "audio_codes": torch.zeros(3)}, f)
    again = b.build_features(tortoise_clips, cache)
    assert not marker.exists()
    assert again.computed == len(tortoise_clips) and again.reused == 0
    assert "is unreadable or not voicetune's" in caplog.text
    assert torch.equal(again[0]["audio_codes"], first[0]["audio_codes"])


def test_loss_weights_and_a_few_steps_reduce_the_loss(tortoise_backend, tortoise_clips, tmp_path):
    b = tortoise_backend
    store = b.build_features(tortoise_clips, tmp_path / "features")
    batch = b.collate([store[i] for i in range(4)])
    cfg = train_config(backend="tortoise", text_ce_weight=0.5, mel_ce_weight=2.0)
    out = b.loss(batch, cfg)
    assert float(out["loss"].detach()) == pytest.approx(
        0.5 * float(out["text_ce"]) + 2.0 * float(out["mel_ce"]), rel=1e-6
    )
    optimizer = torch.optim.AdamW(b.param_groups(train_config(backend="tortoise", lr=1e-3)))
    losses = []
    for _ in range(4):
        out = b.loss(batch, cfg)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0]


def test_save_load_round_trip_and_evaluation_in_between_keeps_saved_keys(tortoise_backend, tortoise_base,
                                                                          tortoise_clips, tmp_path):
    b = tortoise_backend
    with torch.no_grad():
        b.gpt.mel_head.weight.add_(0.5)
    keys = set(b.gpt.state_dict())
    b.set_train(False)
    assert "inference_model" in b.gpt._modules and next(b.model.vocoder.parameters()).device.type == "cpu"
    b.set_train(True)
    assert set(b.gpt.state_dict()) == keys  # no inference aliases reach a checkpoint
    b.save(tmp_path / "trainable.pt")
    other = get_backend("tortoise")
    other.load_base(tortoise_base, torch.device("cpu"))
    other.load_trained(tmp_path / "trainable.pt")
    for k, v in b.gpt.state_dict().items():
        assert torch.equal(v, other.gpt.state_dict()[k]), k
    torch.save({"text_head.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(BaseModelError, match="bad.pt"):
        other.load_trained(tmp_path / "bad.pt")


def test_synthesis_is_seeded_24k_and_names_its_preset(tortoise_shared_backend, tortoise_clips):
    b = tortoise_shared_backend
    refs = [tortoise_clips[0].audio_path]
    b.set_train(False)
    state = torch.random.get_rng_state()
    a = b.synthesize("Good morning.", refs, "en", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    again = b.synthesize("Good morning.", refs, "en", seed=3)
    other = b.synthesize("Good morning.", refs, "en", seed=4)
    assert a.sample_rate == 24000 and a.audio.dtype.name == "float32" and abs(a.audio).max() <= 1.0
    assert (a.audio == again.audio).all() and not (
        a.audio.shape == other.audio.shape and (a.audio == other.audio).all()
    )
    assert a.meta["preset"] == "evaluation" and a.meta["max_audio_tokens"] == 24
    assert 0 < a.meta["num_tokens"] <= 24
    with pytest.raises(ValueError, match="empty"):
        b.synthesize("  ", refs, "en", seed=0)
    with pytest.raises(ValueError, match="unknown Tortoise synthesis preset"):
        b.use_synthesis_preset("turbo")


def test_export_loads_in_coqui_tortoise_and_lora_is_merged(
    tortoise_backend, tortoise_base, tortoise_clips, tmp_path
):
    from TTS.tts.configs.tortoise_config import TortoiseConfig
    from TTS.tts.models.tortoise import Tortoise

    b = tortoise_backend
    cfg = train_config(backend="tortoise", finetune="lora", lora_rank=4)
    b.configure_model(cfg)
    with torch.no_grad():  # a trained adapter: its merged weights differ from the base
        for name, p in b.gpt.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    b.export(tmp_path / "pkg")
    with pytest.raises(ValueError, match="base model folder"):
        b.export(tortoise_base)
    assert set(layout.REQUIRED_FILES) <= {p.name for p in (tmp_path / "pkg").iterdir()}
    exported = torch.load(tmp_path / "pkg" / layout.AUTOREGRESSIVE, weights_only=True)
    config = TortoiseConfig()
    config.load_json(str(tmp_path / "pkg" / layout.CONFIG))
    model = Tortoise(config)
    model.load_checkpoint(config, checkpoint_dir=str(tmp_path / "pkg"), eval=True)
    theirs = model.autoregressive.state_dict()
    assert set(exported) == {k for k in theirs if not k.startswith(layout.INFERENCE_ONLY_PREFIXES)}
    assert all(torch.equal(v, theirs[k]) for k, v in exported.items())
    base = torch.load(tortoise_base / layout.AUTOREGRESSIVE, weights_only=True)
    key = "gpt.h.0.attn.c_attn.weight"
    assert not torch.equal(exported[key], base[key])  # the adapter is folded in
    assert str(model.mel_norm_path).endswith(layout.MEL_NORMS)


def test_an_export_is_a_base_to_finetune_again(tortoise_backend, tortoise_clips, tmp_path):
    b = tortoise_backend
    with torch.no_grad():
        b.gpt.text_head.bias.add_(1.0)
    b.export(tmp_path / "pkg")
    again = get_backend("tortoise")
    again.load_base(tmp_path / "pkg", torch.device("cpu"))
    assert torch.equal(again.gpt.text_head.bias, b.gpt.text_head.bias)
    cfg = train_config(backend="tortoise")
    again.configure_model(cfg)
    store = again.build_features(tortoise_clips[:2], tmp_path / "features")
    out = again.loss(again.collate([store[0], store[1]]), cfg)
    out["loss"].backward()
    assert again.gpt.text_head.bias.grad is not None


def test_validation_loss_gives_the_text_and_mel_parts_of_held_out_clips_in_inference_mode(
        tortoise_backend, tortoise_clips, tmp_path):
    b = tortoise_backend
    cfg = train_config(backend="tortoise")
    b.configure_training(cfg)  # the packed loss, as in a training run
    held_out = b.build_features(tortoise_clips[2:4], tmp_path / "eval_features")
    batch = b.collate([held_out[0], held_out[1]])
    b.set_train(False)
    parts = b.validation_loss(batch, cfg)
    assert set(parts) == {"loss", *type(b).loss_parts} and not parts["loss"].requires_grad
    assert float(parts["loss"]) == pytest.approx(
        0.01 * float(parts["text_ce"]) + float(parts["mel_ce"]), rel=1e-6
    )
    with torch.no_grad():  # UnifiedVoice.forward on the same batch, no dropout: the same numbers
        latent = b.gpt.get_conditioning(batch["cond_mels"])
        text_ce, mel_ce, _ = b.gpt(
            latent,
            batch["text_inputs"],
            batch["text_lengths"],
            batch["audio_codes"].clone(),
            batch["wav_lengths"],
        )
    assert float(parts["text_ce"]) == pytest.approx(float(text_ce), abs=1e-5)
    assert float(parts["mel_ce"]) == pytest.approx(float(mel_ce), abs=1e-5)
