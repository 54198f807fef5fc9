"""Model-agnostic LoRA (voicetune.backends.adapters) on a small torch model: inject, train, save in peft's
format
(loadable with peft), merge for export."""

from __future__ import annotations

import pytest
import torch

from voicetune.backends.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraSettings,
    has_lora,
    inject_lora,
    is_lora_key,
    merged_state_dict,
    save_adapter,
)

SETTINGS = LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=("q", "v"))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.v, self.out = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.q(x)) * self.v(x))


def _trained() -> tuple[Tiny, torch.Tensor]:
    torch.manual_seed(0)
    model = Tiny()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    n = inject_lora(model, SETTINGS)
    assert n == 2 * 4 * (8 + 8) and has_lora(model)
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all(is_lora_key(name) for name in trained if "lora" in name)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(16, 8)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model.base_state = base_state  # type: ignore[attr-defined]
    return model, x


def test_adapters_start_as_a_no_op_and_a_second_injection_is_refused():
    torch.manual_seed(0)
    model, x = Tiny(), torch.randn(4, 8)
    before = model(x)
    inject_lora(model, SETTINGS)
    torch.testing.assert_close(model(x), before)  # lora_B starts at zero
    with pytest.raises(ValueError, match="already"):
        inject_lora(model, SETTINGS)
    with pytest.raises(ValueError, match="--lora-targets"):
        inject_lora(Tiny(), LoraSettings(4, 8.0, 0.0, ("nope",)))


def test_the_merged_state_has_the_base_keys_and_computes_the_adapted_function():
    model, x = _trained()
    merged = merged_state_dict(model)
    fresh = Tiny()
    assert set(merged) == set(fresh.state_dict())  # no lora_* / base_layer keys left
    fresh.load_state_dict(merged, strict=True)
    model.eval()
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-6)


def test_a_saved_adapter_loads_with_peft_onto_the_same_base(tmp_path):
    from peft import PeftModel

    model, x = _trained()
    out = save_adapter(model, SETTINGS, tmp_path / "adapter", base_model="tiny")
    assert (out / ADAPTER_WEIGHTS).is_file() and (out / ADAPTER_CONFIG).is_file()
    base = Tiny()
    base.load_state_dict(model.base_state)
    loaded = PeftModel.from_pretrained(base, str(out)).eval()
    model.eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
