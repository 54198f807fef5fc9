"""The export check of ``voicetune export`` (voicetune.packaging.check_export): the written package is loaded
back and compared with the checkpoint and the base model; an export that silently drops the adapter is
refused, ``--no-check`` skips the check. The tiny XTTS with a trained LoRA; the fault (an adapter folded in as
zero, as a
broken merge would) is injected into peft's LoRA layer, everything else is real."""

from __future__ import annotations

import pytest
import torch

from voicetune.cli import main
from voicetune.evaluation import change
from voicetune.packaging import ExportCheckError, export, read_package


@pytest.mark.slow  # ~15 CPU-s: an export and three models rendering
def test_the_export_check_passes_for_a_real_finetune_and_is_recorded(tiny_lora_run, tmp_path):
    package = export(tiny_lora_run, tmp_path / "package")
    check = read_package(package)["export_check"]
    assert check["checked"] and check["passed"] is True and check["sentences"] == 2
    assert (
        not check["export_vs_base"]["indistinguishable"]
        and not check["checkpoint_vs_base"]["indistinguishable"]
    )
    assert check["export_vs_base"]["spectral_distance"] > change.SPECTRAL_DISTANCE_MAX


@pytest.mark.slow
def test_an_export_that_drops_the_adapter_is_refused_and_no_check_skips_the_check(
    tiny_lora_run, tmp_path, monkeypatch, capsys
):
    from peft.tuners.lora.layer import Linear

    def dropped(self, adapter):  # a merge that silently folds in nothing
        return torch.zeros_like(self.get_base_layer().weight)

    monkeypatch.setattr(Linear, "get_delta_weight", dropped)
    with pytest.raises(ExportCheckError, match="renders like the base model although step_4 does not"):
        export(tiny_lora_run, tmp_path / "broken")
    assert not (tmp_path / "broken").exists() or not any((tmp_path / "broken").iterdir())  # nothing written

    assert main(["export", str(tiny_lora_run), "--out", str(tmp_path / "unchecked"), "--no-check"]) == 0
    assert read_package(tmp_path / "unchecked")["export_check"] == {"checked": False, "why": "--no-check"}
    assert "export check: not run (--no-check)" in capsys.readouterr().out
