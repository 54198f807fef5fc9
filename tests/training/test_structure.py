"""What trains: LoRA (adapter-only checkpoints, merged on export), frozen parts, per-part learning rates, an
extended vocabulary, multi-speaker data, and a run whose base is an exported package."""

from __future__ import annotations

import json

import pytest
import torch

from voicetune.backends.base import get_backend
from voicetune.run import RunInfo, latest_checkpoint
from voicetune.training.loop import train


@pytest.fixture(scope="module")
def lora_run(accent_dataset, tiny_base, tmp_path_factory):
    """LoRA + --extend-vocab on the two-speaker accented dataset, 2 steps, exported."""
    from voicetune.packaging import export

    root = tmp_path_factory.mktemp("lora")
    result = train(
        accent_dataset,
        tiny_base,
        root / "run",
        max_steps=2,
        batch_size=2,
        lr=1e-2,
        finetune="lora",
        lora_rank=4,
        extend_vocab=True,
        eval_every=0,
        eval_every_epochs=0,
        seed=2,
    )
    package = export(root / "run", root / "package")
    return result, package


def _coqui_load(folder):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(folder / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(folder), strict=True, eval=True)
    return model


def test_extend_vocab_keeps_every_clip_and_writes_the_vocab_into_the_run(lora_run):
    result, _ = lora_run
    run = result.run_dir
    assert result.clips == 4  # the accented transcripts are no longer dropped for [UNK]
    vocab = json.loads((run / "vocab.json").read_text())["model"]["vocab"]
    assert {"é", "ü", "è", "û"} <= set(vocab)
    model_info = RunInfo.load(run).training["model"]
    assert model_info["vocab"]["new_tokens"] > model_info["vocab"]["old_tokens"]
    assert model_info["vocab"]["still_unknown"] == 0


def test_a_lora_checkpoint_holds_only_the_adapters_and_the_grown_text_rows(lora_run):
    state = torch.load(latest_checkpoint(lora_run[0].run_dir) / "trainable.pt", weights_only=True)
    meta = state.pop("__voicetune__")
    assert meta["partial"] and meta["lora"]["rank"] == 4 and meta["vocab"]
    assert {k for k in state if ".lora_" not in k} == {
        "text_embedding.weight",
        "text_head.weight",
        "text_head.bias",
    }
    assert sum(".lora_A." in k for k in state) == 2 * 4  # 2 layers x (c_attn, c_proj, c_fc, mlp.c_proj)


def test_export_merges_lora_and_the_vocab_so_coqui_loads_it_strictly(lora_run, accent_dataset):
    result, package = lora_run
    model = _coqui_load(package)  # strict=True: exactly the native keys and shapes
    tokens = model.tokenizer.encode("crème brûlée in zürich", "en")
    assert model.tokenizer.tokenizer.token_to_id("[UNK]") not in tokens
    assert model.gpt.text_embedding.num_embeddings == model.tokenizer.get_number_tokens()
    # the merged weights compute what the adapters computed
    backend = get_backend("xtts")
    backend.load_base(RunInfo.load(result.run_dir).base, torch.device("cpu"))
    backend.load_trained(latest_checkpoint(result.run_dir) / "trainable.pt")  # rebuilds vocab + adapters
    backend.set_train(False)
    x = torch.randn(1, 7, model.gpt.model_dim)
    with torch.no_grad():
        for ours, theirs in zip(backend.model.gpt.gpt.h, model.gpt.gpt.h):
            assert torch.allclose(ours.attn.c_attn(x), theirs.attn.c_attn(x), atol=1e-5)
            assert torch.allclose(ours.mlp.c_fc(x), theirs.mlp.c_fc(x), atol=1e-5)
    assert torch.equal(backend.model.gpt.text_embedding.weight, model.gpt.text_embedding.weight)


def test_an_exported_package_is_the_base_of_a_new_run(lora_run, accent_dataset, tmp_path):
    _, package = lora_run
    result = train(accent_dataset, package, tmp_path / "run2", max_steps=1, batch_size=2, extend_vocab=True,
                   eval_every=0, eval_every_epochs=0)
    assert result.clips == 4 and result.steps == 1
    assert not (tmp_path / "run2" / "vocab.json").exists()  # the package's vocabulary already covers the data
    backend = get_backend("xtts")
    backend.load_base(package, torch.device("cpu"))
    backend.load_trained(result.final_checkpoint / "trainable.pt")
    _coqui_load(package)


def test_new_text_rows_start_at_the_mean_of_the_old_ones(tiny_base):
    from voicetune.backends.xtts.vocab import extend_vocab

    backend = get_backend("xtts")
    backend.load_base(tiny_base, torch.device("cpu"))
    gpt = backend.model.gpt
    old_emb, old_head = gpt.text_embedding.weight.clone(), gpt.text_head.weight.clone()
    ext = extend_vocab(backend.model.tokenizer, [("Grüße aus München", "de")], 8)
    assert ext.new_chars[:2] and ext.old_size == old_emb.shape[0]
    backend.apply_vocab(ext.text)
    assert torch.equal(gpt.text_embedding.weight[: ext.old_size], old_emb)
    assert torch.allclose(
        gpt.text_embedding.weight[ext.old_size :], old_emb.mean(0).expand(ext.new_size - ext.old_size, -1)
    )
    assert torch.allclose(
        gpt.text_head.weight[ext.old_size :], old_head.mean(0).expand(ext.new_size - ext.old_size, -1)
    )
    # text the old vocabulary covered tokenizes exactly as before
    before = get_backend("xtts")
    before.load_base(tiny_base, torch.device("cpu"))
    plain = "the quick brown fox jumps over the lazy dog"
    assert backend.model.tokenizer.encode(plain, "en") == before.model.tokenizer.encode(plain, "en")


def test_frozen_parts_stay_put_and_lr_multipliers_reach_the_optimizer(accent_dataset, tiny_base, tmp_path):
    from voicetune.backends.registry import train_config

    run = tmp_path / "run"
    result = train(
        accent_dataset,
        tiny_base,
        run,
        max_steps=2,
        batch_size=2,
        lr=1e-2,
        eval_every=0,
        eval_every_epochs=0,
        freeze="conditioning_encoder,conditioning_perceiver",
        lr_audio_mult=0.5,
    )
    training = RunInfo.load(run).training
    # no --extend-vocab: the accented transcripts are dropped for unknown characters, counted by reason
    assert training["clips_dropped"].get("unknown_characters") == 3
    assert result.clips == training["clips_used"] == 1
    trained = torch.load(result.final_checkpoint / "trainable.pt", weights_only=True)
    assert not any(k.startswith(("conditioning_encoder.", "conditioning_perceiver.")) for k in trained)
    assert trained.pop("__voicetune__")["partial"]
    base = get_backend("xtts")
    base.load_base(tiny_base, torch.device("cpu"))
    before = base.model.gpt.state_dict()
    assert not torch.equal(trained["mel_head.weight"], before["mel_head.weight"])  # the rest trained
    cfg = train_config(lr=1e-2, lr_audio_mult=0.5, freeze="conditioning_encoder")
    base.configure_model(cfg)
    groups = {g["name"]: g for g in base.param_groups(cfg)}
    assert groups["audio/decay"]["lr"] == pytest.approx(5e-3) and "lr" not in groups["decay"]
    assert set(groups) == {"decay", "no_decay", "audio/decay", "audio/no_decay"}
    assert not any(p is q for g in groups.values() for p in g["params"]
                   for q in base.model.gpt.conditioning_encoder.parameters())


def test_with_several_speakers_each_clip_is_conditioned_on_a_crop_of_itself(
    accent_dataset, tiny_base, tmp_path
):
    from voicetune.backends.registry import train_config
    from voicetune.data.manifest import Dataset

    data = Dataset.load(accent_dataset)
    assert sorted(data.speakers) == ["anna", "ben"]
    backend = get_backend("xtts")
    backend.load_base(tiny_base, torch.device("cpu"))
    backend.configure_model(train_config(extend_vocab=True), tmp_path,
                            [(c.text, c.language) for c in data.train])
    store = backend.build_features(data.train, tmp_path / "features")
    assert len(store) == 4
    for i in range(len(store)):
        full = torch.load(store.files[i], weights_only=True)["cond_mel"]
        crop = store[i]["cond_mel"]
        frames = int(store[i]["cond_len"]) // 256 - 2  # frames of the crop that are not edge or padding
        windows = full.unfold(1, frames, 1)  # [80, positions, frames]: every crop of the clip's own mel
        match = (windows - crop[:, None, :frames]).abs().amax(dim=(0, 2)).min()
        assert match < 1e-6, (i, float(match))


def test_clips_over_the_length_limits_are_dropped_and_counted(tiny_dataset, tiny_base, tmp_path):
    from voicetune.data.manifest import Dataset

    clips = Dataset.load(tiny_dataset).train
    backend = get_backend("xtts")
    backend.load_base(tiny_base, torch.device("cpu"))
    everything = backend.build_features(clips, tmp_path / "features")
    seconds = sorted(everything.durations())
    backend.set_length_limits(max_audio_seconds=(seconds[1] + seconds[2]) / 2)
    short = backend.build_features(clips, tmp_path / "features")  # same cache: limits are not part of the key
    assert short.drop_summary() == {"too_long_audio": 2} and len(short) == 2 and short.computed == 0
    backend.set_length_limits(max_text_tokens=5)
    assert backend.build_features(clips, tmp_path / "features").drop_summary() == {"too_long_text": 4}
