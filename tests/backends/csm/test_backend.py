"""The CSM backend through voicetune's loop on a Spanish dataset: LoRA (only the adapters train, exact
resume), export (a peft adapter and a merged folder transformers loads and generates from), synthesis, the
codebook- embedding warning, out-of-memory back-off and finetuning a finetune."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from voicetune.audio.io import load_audio
from voicetune.backends.adapters import is_lora_key
from voicetune.backends.csm.loss import csm_loss
from voicetune.backends.registry import get_backend
from voicetune.data.manifest import Dataset
from voicetune.packaging import export
from voicetune.run import latest_checkpoint, trainable_path
from voicetune.training.loop import train
from voicetune.utils.io import file_sha256

LORA = {
    "backend": "csm",
    "finetune": "lora",
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "lora_dropout": 0.0,
    "lr": 5e-3,
    "batch_size": 2,
    "seed": 3,
    "save_every": 2,
    "eval_every": 0,
    "eval_every_epochs": 0,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def lora_run(csm_base, spanish_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("csm_lora")
    return root, train(spanish_dataset, csm_base, root / "run", max_steps=4, **LORA)


def _batch(backend, dataset, cache):
    store = backend.build_features(Dataset.load(dataset).train, cache)
    return backend.collate([store[i] for i in range(len(store))])


def test_lora_trains_only_the_adapters_and_a_resumed_run_continues_exactly(
    lora_run, csm_base, spanish_dataset
):
    root, reference = lora_run
    assert all(np.isfinite(h["loss"]) and {"backbone_ce", "depth_ce"} <= set(h) for h in reference.losses)
    state = torch.load(trainable_path(latest_checkpoint(reference.run_dir)), weights_only=True)
    tensors = [k for k, v in state.items() if torch.is_tensor(v)]
    assert tensors and all(is_lora_key(k) for k in tensors)
    assert not any(k.startswith("codec_model") for k in tensors)
    assert any(k.startswith("depth_decoder") for k in tensors) and any(
        k.startswith("backbone") for k in tensors
    )
    info = json.loads((reference.run_dir / "run.json").read_text())["training"]
    assert info["loss_parts"] == ["backbone_ce", "depth_ce"] and "c0" in info["loss_note"]
    run = root / "resumed"
    train(spanish_dataset, csm_base, run, max_steps=2, **LORA)
    second = train(resume=run, max_steps=4)
    for got, want in zip(second.losses, reference.losses[2:], strict=True):
        for key in ("loss", "backbone_ce", "depth_ce"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7)
    ours = torch.load(trainable_path(latest_checkpoint(run)), weights_only=True)
    assert all(torch.equal(ours[k], state[k]) for k in tensors)


def test_the_lora_export_is_a_peft_adapter_and_a_merged_folder_that_transformers_loads_and_generates_from(
        lora_run, csm_base, spanish_dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoProcessor, CsmForConditionalGeneration

    root, reference = lora_run
    pkg = export(reference.run_dir, root / "pkg")
    assert (pkg / "adapter" / "adapter_model.safetensors").is_file()
    trained = get_backend("csm")
    trained.load_base(csm_base, torch.device("cpu"))
    trained.load_trained(trainable_path(latest_checkpoint(reference.run_dir)))
    trained.set_train(False)
    batch = _batch(trained, spanish_dataset, tmp_path / "features")
    with torch.no_grad():
        want = csm_loss(trained.model, batch)["loss"]
        merged = CsmForConditionalGeneration.from_pretrained(pkg).eval()
        got = csm_loss(merged, batch)["loss"]
        peft_model = PeftModel.from_pretrained(
            CsmForConditionalGeneration.from_pretrained(csm_base), pkg / "adapter"
        )
        via_peft = csm_loss(peft_model.base_model.model.eval(), batch)["loss"]
        base = csm_loss(CsmForConditionalGeneration.from_pretrained(csm_base).eval(), batch)["loss"]
    assert got.item() == pytest.approx(want.item(), rel=1e-5) and via_peft.item() == pytest.approx(
        want.item(), rel=1e-5
    )
    assert abs(got.item() - base.item()) > 1e-4  # the finetune changed the model
    adapted = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert adapted and not any("codec_model" in n for n in adapted)  # the Mimi codec got no adapters

    processor = AutoProcessor.from_pretrained(pkg)
    sidecar = json.loads((pkg / "voicetune_csm.json").read_text())
    ref = min((pkg / "reference").iterdir())
    audio, _ = load_audio(ref, sr=24000)
    text = sidecar["context_texts"][file_sha256(ref)]  # the export knows its references' transcripts
    conversation = [
        {"role": "0", "content": [{"type": "text", "text": text}, {"type": "audio", "audio": audio}]},
        {"role": "0", "content": [{"type": "text", "text": "¿Qué hora es?"}]},
    ]
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    invalid = list(range(merged.config.codec_config.codebook_size, merged.config.vocab_size))
    torch.manual_seed(0)
    out = merged.generate(
        **inputs,
        output_audio=True,
        max_new_tokens=6,
        do_sample=True,
        suppress_tokens=invalid,
        depth_decoder_suppress_tokens=invalid,
    )
    assert out[0].ndim == 1 and out[0].numel() > 0


def test_synthesis_speaks_spanish_from_the_package_capped_and_seeded(lora_run, tmp_path):
    import soundfile as sf

    from voicetune.cli import main

    root, _ = lora_run
    pkg = root / "pkg" if (root / "pkg").is_dir() else export(root / "run", root / "pkg")
    out = tmp_path / "hola.wav"
    assert (
        main(
            ["synthesize", str(pkg), "--text", "Buenos días, ¿cómo estás?", "--out", str(out), "--seed", "7"]
        )
        == 0
    )
    info = sf.info(str(out))
    assert info.samplerate == 24000 and 0 < info.duration <= 2.0 + 0.1  # the tiny base's 2 s cap
    backend = get_backend("csm")
    backend.load_base(pkg, torch.device("cpu"))
    refs = sorted((pkg / "reference").iterdir())[:2]
    texts = ["Sí, claro.", "", "Muchas gracias por tu ayuda."]
    rendered = backend.synthesize_batch(texts, refs, "es", [5, 5, 5])  # one batched generation, one seed
    assert isinstance(rendered[1], ValueError)  # the empty text fails alone, in its place
    for wav in (rendered[0], rendered[2]):
        assert wav.sample_rate == 24000 and 0 < wav.meta["max_frames"] <= 25 and wav.audio.size > 0


def test_a_base_with_two_different_codebook_embeddings_is_explained_and_its_export_loads_without_the_warning(
        csm_base, tmp_path, caplog):
    from safetensors.torch import load_file, save_file
    from transformers import CsmForConditionalGeneration

    untied = tmp_path / "untied"
    shutil.copytree(csm_base, untied)
    weights = load_file(untied / "model.safetensors")
    depth = weights["depth_decoder.model.embed_tokens.weight"]
    # what an untying finetuner saves
    weights["backbone_model.embed_tokens.embed_audio_tokens.weight"] = depth + 0.01
    save_file(weights, untied / "model.safetensors", metadata={"format": "pt"})

    tf_logger = logging.getLogger("transformers.modeling_utils")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    tf_logger.addHandler(handler)
    try:
        caplog.set_level(logging.WARNING, logger="voicetune.backends.csm.export")
        backend = get_backend("csm")
        backend.load_base(untied, torch.device("cpu"))
        assert any("will NOT tie them" in m for m in seen)  # transformers' warning, reproduced
        assert any(
            "two different copies of CSM's codebook embeddings" in r.getMessage() for r in caplog.records
        )
        backend.export(tmp_path / "out")
        config = json.loads((tmp_path / "out" / "config.json").read_text())
        assert config["tie_codebooks_embeddings"] is False
        seen.clear()
        model = CsmForConditionalGeneration.from_pretrained(tmp_path / "out")
        assert not any("tie" in m for m in seen)  # the cause is fixed: no warning any more
        assert torch.equal(model.backbone_model.embed_tokens.embed_audio_tokens.weight,
                           weights["backbone_model.embed_tokens.embed_audio_tokens.weight"])
        tied = CsmForConditionalGeneration.from_pretrained(csm_base)  # a tied base stays tied, silently
        assert (
            tied.backbone_model.embed_tokens.embed_audio_tokens.weight
            is tied.depth_decoder.model.embed_tokens.weight
        )
        assert not any("tie" in m for m in seen)
    finally:
        tf_logger.removeHandler(handler)


def test_out_of_memory_halves_the_micro_batch(csm_base, spanish_dataset, tmp_path):
    from voicetune.training import oom

    oom.simulate_limit(1)
    try:
        result = train(spanish_dataset, csm_base, tmp_path / "run", max_steps=2, **LORA)
    finally:
        oom.simulate_limit(None)
    assert [h["micro_batch"] for h in result.losses] == [1, 1]


def test_a_finetune_of_a_finetune_starts_from_the_export(lora_run, spanish_dataset, tmp_path):
    root, _ = lora_run
    pkg = root / "pkg" if (root / "pkg").is_dir() else export(root / "run", root / "pkg")
    result = train(spanish_dataset, pkg, tmp_path / "again", max_steps=1,
                   **{**LORA, "finetune": "full", "lr": 1e-4})
    assert result.steps == 1 and np.isfinite(result.losses[0]["loss"])
    again = export(tmp_path / "again", tmp_path / "pkg2")
    assert json.loads((again / "voicetune_csm.json").read_text())["untrained"] is True  # still the tiny base


def test_doctor_checks_a_csm_base_and_auto_trains_with_its_recommendation(
    csm_base, spanish_dataset, tmp_path
):
    from voicetune.preflight import doctor

    report = doctor(base=csm_base, dataset=spanish_dataset, backend="csm", workdir=tmp_path)
    checks = {c.name: c for c in report.checks}
    assert checks["base model"].status == "warn" and "complete csm layout" in checks["base model"].detail
    assert "UNTRAINED" in checks["base model"].detail and "training dry run" in checks
    result = train(spanish_dataset, csm_base, tmp_path / "auto", max_steps=1, auto=True, **LORA)
    assert result.steps == 1 and np.isfinite(result.losses[0]["loss"])


@pytest.mark.slow
def test_ctrl_c_saves_and_stops_then_the_run_resumes_exactly(csm_base, spanish_dataset, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    reference = train(
        spanish_dataset, csm_base, tmp_path / "reference", max_steps=6, **{**LORA, "save_every": 3}
    )
    run = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**LORA, "save_every": 3}.items()]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicetune.cli",
            "train",
            str(spanish_dataset),
            "--base",
            str(csm_base),
            "--out",
            str(run),
            "--max-steps",
            "6",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while (
        not (metrics.is_file() and metrics.read_text().strip())
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "--resume" in out, out[-3000:]
    stopped = latest_checkpoint(run)
    assert stopped is not None and int(stopped.name.split("_")[1]) < 6
    train(resume=run)
    got = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in got] == list(range(1, 7))
    for a, b in zip(got, reference.losses, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
