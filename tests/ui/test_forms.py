"""Forms generated from the config dataclasses: every option with a flag is a field with its documentation,
and what the form sends becomes `voicetune train` flags that the real command line parses back to the same
options."""

from __future__ import annotations

import dataclasses

import pytest

from voicetune.backends.registry import available_backends, options_class, train_config
from voicetune.cli import build_parser
from voicetune.config import EvalOptions, PrepareConfig, TrainConfig, option_fields
from voicetune.ui.forms import (
    cli_flags,
    form_fields,
    parse_value,
    recommended_values,
    sections,
    to_overrides,
    train_fields,
)
from voicetune.ui.safety import UiSafetyError


@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "fake"])
def test_the_train_form_has_every_option_of_the_backend_with_its_doc(backend):
    fields = train_fields(backend)
    expected = {n for n, o in option_fields(TrainConfig, options_class(backend)).items()
                if o.field.metadata.get("cli", True)}
    assert {f.name for f in fields} == expected
    assert all(f.help and f.flag in f.info for f in fields)
    by_name = {f.name: f for f in fields}
    assert by_name["backend"].kind == "choice" and backend in by_name["backend"].choices
    assert by_name["precision"].choices == ("auto", "bf16", "fp16", "fp32")
    assert by_name["batch_size"].kind == "int" and by_name["batch_size"].low == 1
    assert by_name["lr"].kind == "float" and by_name["betas"].kind == "list"
    parts = sections(fields)
    assert {f.name for f in parts["basic"]} == {f.name for f in fields if f.basic}
    assert {f.name for f in parts["backend_options"]} == {
        g.name for g in dataclasses.fields(options_class(backend))} - {f.name for f in parts["basic"]}
    assert {f.group for f in parts["eval"]} == {"eval"}
    assert "eval_every" in {f.name for f in parts["eval"]}


def test_prepare_form_fields_follow_prepare_config():
    fields = form_fields(PrepareConfig)
    assert [f.name for f in fields] == [f.name for f in dataclasses.fields(PrepareConfig)]


def test_values_typed_in_the_form_are_parsed_or_refused_naming_the_flag():
    by_name = {f.name: f for f in train_fields("xtts")}
    assert parse_value(by_name["lr"], "2e-4") == 2e-4
    assert parse_value(by_name["batch_size"], 4.0) == 4
    assert parse_value(by_name["milestones"], "100, 200 300") == [100.0, 200.0, 300.0]
    assert parse_value(by_name["max_steps"], "") == 0  # an empty number is its default
    with pytest.raises(UiSafetyError, match="--lr"):
        parse_value(by_name["lr"], "fast")
    with pytest.raises(UiSafetyError, match="--batch-size"):
        parse_value(by_name["batch_size"], "2.5")
    with pytest.raises(UiSafetyError, match="--precision"):
        parse_value(by_name["precision"], "fp8")


def test_form_values_become_flags_that_the_cli_parses_back_to_the_same_config():
    fields = train_fields("xtts")
    values = {"max_steps": 7, "lr": "2e-4", "eval_every": 3, "eval_intrusive": False, "finetune": "lora",
              "milestones": "4, 6", "scheduler": "multistep", "checkpoint_mlp": True, "dropout": "0",
              "freeze": "mel_head", "betas": "0.9, 0.96", "batch_size": 2}
    overrides = to_overrides(fields, values)
    assert "betas" not in overrides and "batch_size" not in overrides  # unchanged from the defaults
    argv = ["train", "data", "--base", "b", "--out", "r", *cli_flags(fields, overrides)]
    args = build_parser("xtts").parse_args(argv)
    parsed = {k: v for k, v in vars(args).items() if k in {f.name for f in fields} and v is not None}
    assert train_config(**parsed) == train_config(**overrides)
    cfg = train_config(**overrides)
    assert cfg.max_steps == 7 and cfg.lr == 2e-4 and cfg.eval.every == 3 and cfg.eval.intrusive is False
    assert cfg.milestones == [4.0, 6.0] and cfg.backend_options.checkpoint_mlp is True


def test_doctor_recommendations_fill_the_fields_they_name():
    fields = train_fields("xtts")
    # doctor's order: the GPU check's rule of thumb, then the measured dry run (which wins)
    recs = [
        "GPU 0 (80 GiB): --precision bf16 --batch-size 16 --grad-accum 2",
        "cuda: --batch-size 8 --grad-accum 4 --precision bf16 --checkpoint-mlp\n    micro-batch 8: peak ...",
        "--unknown-flag 3",
    ]
    got = recommended_values(recs, fields)
    assert got == {"batch_size": 8, "grad_accum": 4, "precision": "bf16", "checkpoint_mlp": True}


def test_eval_options_show_under_their_prefixed_flags():
    names = {f.name for f in train_fields("xtts") if f.group == "eval"}
    assert names == {("" if f.metadata.get("flag") else "eval_") + (f.metadata.get("flag") or f.name)
                     for f in dataclasses.fields(EvalOptions)}
