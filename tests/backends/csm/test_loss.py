"""The CSM training loss from cached codes: equal to transformers' forward on the same frames; the depth
decoder on a random, reproducible fraction of them; context clips read, not scored."""

from __future__ import annotations

import math

import pytest
import torch

from voicetune.backends.csm.features import collate
from voicetune.backends.csm.loss import backbone_inputs, csm_loss
from voicetune.backends.registry import get_backend, train_config
from voicetune.data.manifest import Dataset


@pytest.fixture(scope="module")
def loaded(csm_base, spanish_dataset, tmp_path_factory):
    """A loaded tiny CSM backend and its feature store of the Spanish train split."""
    backend = get_backend("csm")
    backend.load_base(csm_base, torch.device("cpu"))
    backend.configure_model(train_config(backend="csm"))
    store = backend.build_features(
        Dataset.load(spanish_dataset).train, tmp_path_factory.mktemp("csm_features")
    )
    return backend, store


def _transformers_loss(model, batch):
    """CsmForConditionalGeneration.forward with labels (codes on target frames; -100 off the depth frames)."""
    labels = batch["codes"].clone()
    labels[~batch["target"]] = -100
    depth = torch.zeros(batch["target"].numel(), dtype=torch.bool)
    if "depth_idx" in batch:
        depth[batch["depth_idx"][batch["depth_valid"]]] = True
    labels[..., 1:][~depth.view_as(batch["target"])] = -100
    x = backbone_inputs(model, batch["tokens"], batch["codes"], batch["is_audio"])
    return model(inputs_embeds=x, labels=labels)


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_the_loss_equals_transformers_forward_on_the_same_frames(loaded, fraction):
    backend, store = loaded
    model = backend.model.eval()
    batch = collate([store[i] for i in range(3)], pad_id=1, depth_fraction=fraction)
    with torch.no_grad():
        ours = csm_loss(model, batch)
        theirs = _transformers_loss(model, batch)
    assert ours["backbone_ce"].item() == pytest.approx(theirs.backbone_loss.item(), rel=1e-5)
    assert ours["depth_ce"].item() == pytest.approx(theirs.depth_decoder_loss.item(), rel=1e-5)
    assert ours["loss"].item() == pytest.approx(theirs.loss.item(), rel=1e-5)


def test_the_depth_decoder_trains_on_the_given_fraction_of_frames_chosen_reproducibly(loaded):
    _, store = loaded
    items = [store[i] for i in range(4)]
    frames = int(sum(it["target"].sum() for it in items))
    batch = collate(items, pad_id=1, depth_fraction=1 / 16)
    assert int(batch["depth_valid"].sum()) == batch["depth_idx"].numel() == math.ceil(frames / 16)
    assert bool(batch["target"].flatten()[batch["depth_idx"]].all())  # only target frames
    again = collate([store[i] for i in range(4)], pad_id=1, depth_fraction=1 / 16)
    assert torch.equal(batch["depth_idx"], again["depth_idx"])  # same items, same epoch: same frames
    store.set_epoch(1)
    later = collate([store[i] for i in range(4)], pad_id=1, depth_fraction=1 / 16)
    store.set_epoch(0)
    assert not torch.equal(batch["depth_idx"], later["depth_idx"])
    padded = collate(items, pad_id=1, pad_multiple=64, depth_fraction=1 / 16, depth_multiple=8)
    assert padded["tokens"].shape[1] % 64 == 0 and padded["depth_idx"].numel() % 8 == 0
    assert int(padded["depth_valid"].sum()) == padded["depth_idx"].numel()  # enough frames: all valid


def test_padding_changes_nothing_and_every_trained_part_gets_gradients(loaded):
    backend, store = loaded
    model = backend.model.train()
    items = [store[i] for i in range(2)]
    plain, padded = (collate(items, pad_id=1, depth_fraction=0.5, pad_multiple=m) for m in (1, 64))
    with torch.no_grad():
        a, b = csm_loss(model.eval(), plain), csm_loss(model.eval(), padded)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-5)
    model.train()
    model.zero_grad(set_to_none=True)
    csm_loss(model, plain)["loss"].backward()
    for name in (
        "backbone_model.layers.0.self_attn.q_proj.weight",
        "depth_decoder.model.layers.0.mlp.up_proj.weight",
        "depth_decoder.codebooks_head.weight",
        "lm_head.weight",
        "embed_text_tokens.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.codec_model.parameters())
    model.zero_grad(set_to_none=True)


def test_context_clips_come_before_the_clip_and_are_not_targets(csm_base, spanish_dataset, tmp_path):
    backend = get_backend("csm")
    backend.load_base(csm_base, torch.device("cpu"))
    backend.configure_model(train_config(backend="csm", context_clips=2))
    store = backend.build_features(Dataset.load(spanish_dataset).train, tmp_path / "features")
    item = store[0]
    own = store.segments[0]
    assert item["tokens"].numel() > own.length  # context segments first
    assert int(item["target"].sum()) == own.codes.shape[0] + 1  # the clip's frames and its end frame only
    assert bool(item["target"][-own.length:].any()) and not bool(item["target"][: -own.length].any())
    assert int((item["tokens"] == backend.model.config.audio_eos_token_id).sum()) >= 2


def test_text_embeddings_looked_up_on_the_cpu_give_the_same_loss(loaded):
    """On a GPU a frozen text embedding stays on the CPU and collate looks the batch up
    (configure_training)."""
    backend, store = loaded
    items = [store[i] for i in range(2)]
    plain = backend.collate(items)
    backend._text_on_cpu = True
    try:
        looked_up = backend.collate(items)
    finally:
        backend._text_on_cpu = False
    assert "text_embeds" in looked_up and "text_embeds" in backend.graph_inputs(looked_up)
    with torch.no_grad():
        a, b = csm_loss(backend.model.eval(), plain), csm_loss(backend.model.eval(), looked_up)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-6)
