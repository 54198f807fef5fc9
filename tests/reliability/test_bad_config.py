"""Absurd or malformed training settings: rejected before anything is written, naming the option and what is
allowed; YAML's own spellings of valid values are accepted; a batch larger than the dataset is clamped."""

from __future__ import annotations

import pytest

from voicetune.backends.registry import load_train_config
from voicetune.config import TrainConfig, load_yaml

from .helpers import assert_nothing_partial, assert_reported, assert_unchanged, cli, digest

# YAML text of a --config file -> what the error must say (the option, and the allowed range or type)
BAD_YAML = {
    "batch_size_true": ("batch_size: true\n", r"batch_size must be of type int, got True"),
    "batch_size_float": ("batch_size: 2.5\n", r"batch_size must be of type int, got 2\.5"),
    "betas_words": ("betas: [a, b]\n", r"betas\[0\] must be of type float, got 'a'"),
    "betas_not_a_list": ("betas: 0.9\n", r"betas must be a list"),
    "epochs_1e9": (
        "epochs: 1000000000\n",
        r"epochs must lie in \[0, 100000\], not 1000000000; fix --epochs",
    ),
    "lr_1e9": ("lr: 1.0e9\n", r"lr must lie in \[0, 1\], not 1000000000\.0; fix --lr"),
    "lr_nan": ("lr: .nan\n", r"lr must be a finite number, not nan; fix --lr"),
    "warmup_negative": (
        "warmup_steps: -5\n",
        r"warmup_steps must lie in \[0, 10000000\], not -5; fix --warmup-steps",
    ),
    "save_every_negative": (
        "save_every: -1\n",
        r"save_every must lie in \[0, 10000000\], not -1; fix --save-every",
    ),
    "batch_size_100000": (
        "batch_size: 100000\n",
        r"batch_size must lie in \[1, 4096\], not 100000; fix --batch-size",
    ),
    "weight_decay_negative": (
        "weight_decay: -1\n",
        r"weight_decay must lie in \[0, 1\], not -1\.0; fix --weight-decay",
    ),
    "seed_negative": ("seed: -1\n", r"seed must lie in \[0, 4294967295\], not -1; fix --seed"),
    "milestones_words": ("scheduler: multistep\nmilestones: [x]\n", r"milestones\[0\] must be of type int"),
    "unknown_option": ("lrr: 0.001\n", r"unknown option\(s\) \['lrr'\]"),
    "not_a_mapping": ("- lr\n- 0.1\n", r"expected a mapping of options, got list"),
    "yaml_syntax": ("lr: [0.1, 0.2\n", r"cannot read config .*bad\.yaml"),
    "not_text": (b"\xff\xfe\x00binary\x00garbage", r"cannot read config .*bad\.yaml"),
}


@pytest.mark.parametrize("kind", sorted(BAD_YAML))
def test_a_bad_config_is_refused_naming_the_option_before_anything_is_written(
    kind, tiny_dataset, tiny_base, tmp_path
):
    text, expected = BAD_YAML[kind]
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = digest(cfg, tiny_dataset, tiny_base)
    run = tmp_path / "run"
    outcome = cli("train", tiny_dataset, "--base", tiny_base, "--out", run, "--config", cfg)
    assert outcome.rc == 1
    assert_reported(outcome, expected)  # 1. the option and what is allowed
    assert_unchanged(
        before, cfg, tiny_dataset, tiny_base
    )  # 3. (2: a bad setting stops the run before it starts)
    assert not run.exists()  # 4. nothing written at all
    assert_nothing_partial(run, "run")


@pytest.mark.parametrize(
    "flag,value,expected",
    [
        ("--lr", "1e9", r"lr must lie in \[0, 1\], not 1000000000\.0; fix --lr"),
        ("--warmup-steps", "-5", r"warmup_steps must lie in \[0, 10000000\], not -5"),
        ("--weight-decay", "-1", r"weight_decay must lie in \[0, 1\], not -1\.0"),
        ("--epochs", "1e9", r"argument --epochs: invalid int value: '1e9'"),
    ],
)
def test_absurd_command_line_values_name_the_flag(flag, value, expected, tiny_dataset, tiny_base, tmp_path):
    outcome = cli("train", tiny_dataset, "--base", tiny_base, "--out", tmp_path / "run", flag, value)
    assert outcome.rc in (1, 2)
    assert_reported(outcome, expected)
    assert not (tmp_path / "run").exists()


def test_yaml_spellings_of_valid_values_are_accepted(tmp_path):
    (tmp_path / "ok.yaml").write_text(
        "lr: 1e-4\nbetas: [0.9, 0.99]\nmilestones: [100, 200.0]\nmax_steps: 5\n"
    )
    cfg = load_yaml(TrainConfig, tmp_path / "ok.yaml")
    assert cfg.lr == 1e-4 and cfg.betas == [0.9, 0.99] and cfg.milestones == [100, 200]


def test_a_batch_larger_than_the_dataset_is_clamped_with_a_warning_and_training_goes_on(
    tiny_dataset, tiny_base, tmp_path
):
    before = digest(tiny_dataset, tiny_base)
    run = tmp_path / "run"
    outcome = cli(
        "train",
        tiny_dataset,
        "--base",
        tiny_base,
        "--out",
        run,
        "--batch-size",
        "4096",
        "--max-steps",
        "1",
        "--eval-every-epochs",
        "0",
    )
    assert outcome.rc == 0, outcome.text[-3000:]
    assert_reported(
        outcome,
        r"--batch-size 4096 x --grad-accum 1 x 1 process\(es\) takes more clips per step than "
        r"the 4 training clips; using --batch-size 4 --grad-accum 1",
    )
    assert load_train_config(run / "config.yaml").batch_size == 4  # what ran is what the run records
    assert (run / "checkpoints" / "step_1" / "meta.json").is_file()
    assert_unchanged(before, tiny_dataset, tiny_base)
