"""voicetune.utils.flat: finding the flat buffer that holds parameters, and refusing partial layouts."""

from __future__ import annotations

import torch

from voicetune.training.optim import FlatAdamW
from voicetune.utils import flat


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))


def test_buckets_give_each_buffer_its_parameters_in_order_so_split_recovers_them():
    model = _model()
    FlatAdamW(model.parameters())
    groups = flat.buckets(model.parameters())
    assert groups is not None and len(groups) == 1
    buffer, params = groups[0]
    for piece, p in zip(buffer.split([p.numel() for p in params]), params):
        assert torch.equal(piece.view(p.shape), p) and piece.data_ptr() == p.data_ptr()


def test_buckets_refuse_parameters_outside_buffers_or_only_part_of_one():
    model = _model()
    assert flat.buckets(model.parameters()) is None  # not flattened
    FlatAdamW(model.parameters())
    assert flat.buckets(list(model.parameters())[:-1]) is None  # the buffer holds more than these
    assert flat.buckets([]) == []


def test_a_parameter_moved_out_of_its_buffer_has_no_owner():
    model = _model()
    FlatAdamW(model.parameters())
    w = model[0].weight
    assert flat.owner(w) is not None
    w.data = w.data.clone()
    assert flat.owner(w) is None
