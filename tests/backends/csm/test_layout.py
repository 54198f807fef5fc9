"""The CSM base folder: validation names what is missing and where to get the model; hub ids."""

from __future__ import annotations

import shutil

import pytest

from voicetune.backends.base import BaseModelError
from voicetune.backends.csm import layout
from voicetune.backends.registry import backend_class, detect_backend


def test_a_folder_missing_files_names_each_of_them_and_where_to_get_the_model(csm_base, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(csm_base, broken)
    (broken / "model.safetensors").unlink()
    (broken / "tokenizer.json").write_bytes(b"")
    with pytest.raises(BaseModelError) as e:
        layout.validate_base_dir(broken)
    msg = str(e.value)
    assert "model.safetensors: missing" in msg and "tokenizer.json: empty" in msg
    assert "huggingface.co/sesame/csm-1b" in msg and "make-tiny-base --backend csm" in msg


def test_pickled_weights_are_named_and_refused(csm_base, tmp_path):
    other = tmp_path / "bin"
    shutil.copytree(csm_base, other)
    (other / "model.safetensors").rename(other / "pytorch_model.bin")
    with pytest.raises(BaseModelError, match="safetensors only"):
        layout.validate_base_dir(other)


def test_a_csm_folder_is_detected_as_csm_and_an_xtts_folder_is_not(csm_base, tiny_base):
    assert detect_backend(csm_base) == "csm"
    assert not backend_class("csm").is_native_folder(tiny_base)  # the XTTS tiny base
    with pytest.raises(BaseModelError, match="model_type is None, not 'csm'"):
        layout.validate_base_dir(tiny_base)


def test_a_hub_id_is_looked_up_in_the_cache_and_fails_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    assert layout.is_hub_id("sesame/csm-1b") and not layout.is_hub_id(str(tmp_path))
    with pytest.raises(BaseModelError, match="sesame/csm-1b: cannot download"):
        layout.resolve("sesame/csm-1b")
    assert not backend_class("csm").is_native_folder("sesame/csm-1b")
