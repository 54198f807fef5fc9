"""Typed configs: validation names the option to fix; YAML round-trips; unknown keys are rejected."""

import pytest

from voicetune.config import ConfigError, PrepareConfig, TrainConfig, from_dict, load_yaml, merge, save_yaml


def test_train_config_yaml_round_trip(tmp_path):
    cfg = TrainConfig(max_steps=7, lr=1e-4, betas=[0.8, 0.9])
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(TrainConfig, tmp_path / "c.yaml") == cfg


def test_unknown_yaml_key_is_an_error_that_lists_valid_options(tmp_path):
    (tmp_path / "c.yaml").write_text("max_step: 3\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['max_step'\].*max_steps"):
        load_yaml(TrainConfig, tmp_path / "c.yaml")


def test_invalid_value_names_the_flag_that_fixes_it():
    with pytest.raises(ConfigError, match="--batch-size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="--min-seconds/--max-seconds"):
        PrepareConfig(min_seconds=12, max_seconds=11)
    with pytest.raises(ConfigError, match="--precision"):
        TrainConfig(precision="fp8")


def test_wrong_type_is_rejected_and_int_promotes_to_float():
    with pytest.raises(ConfigError, match="batch_size must be of type int"):
        from_dict(TrainConfig, {"batch_size": "four"})
    assert from_dict(TrainConfig, {"lr": 1}).lr == 1.0


def test_merge_ignores_none_and_validates():
    cfg = merge(TrainConfig(), {"max_steps": 5, "lr": None})
    assert cfg.max_steps == 5 and cfg.lr == TrainConfig().lr
    with pytest.raises(ConfigError):
        merge(TrainConfig(), {"grad_accum": -1})


def test_every_field_is_documented():
    import dataclasses

    for cls in (PrepareConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
