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


# ------------------------------------------------------------------ groups: eval and the backend's own
# options


def test_a_train_config_has_generic_fields_an_eval_group_and_the_backends_options(tmp_path):
    from voicetune.backends.registry import load_train_config, train_config
    from voicetune.backends.xtts.options import XttsOptions
    from voicetune.config import EvalOptions

    cfg = train_config(batch_size=3, eval_every=5, early_stop_patience=0, dropout=0.0, checkpoint_mlp=True)
    assert isinstance(cfg.eval, EvalOptions) and isinstance(cfg.backend_options, XttsOptions)
    assert (cfg.batch_size, cfg.eval.every, cfg.eval.early_stop_patience) == (3, 5, 0)
    assert cfg.backend_options.dropout == 0.0 and cfg.recompute == "mlp"
    save_yaml(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    # nested layout
    assert "\neval:\n  every: 5\n" in text and "\nxtts:\n" in text and "\ndropout" not in text
    assert load_train_config(tmp_path / "c.yaml") == cfg


def test_the_flat_config_yaml_of_an_earlier_version_still_loads(tmp_path, caplog):
    from voicetune.backends.registry import load_train_config

    (tmp_path / "old.yaml").write_text("backend: xtts\nmax_steps: 6\neval_every: 2\nearly_stop_patience: 0\n"
                                       "text_ce_weight: 0.25\nfast_loss: false\nnum_workers: 0\n")
    with caplog.at_level("INFO", logger="voicetune.config"):
        cfg = load_train_config(tmp_path / "old.yaml")
    assert cfg.max_steps == 6 and cfg.eval.every == 2 and cfg.eval.early_stop_patience == 0
    assert cfg.backend_options.text_ce_weight == 0.25 and cfg.backend_options.fast_loss is False
    assert "earlier config layout" in caplog.text and "num_workers is no longer used" in caplog.text


def test_unknown_keys_in_a_section_are_errors_that_suggest_the_closest(tmp_path):
    from voicetune.backends.registry import load_train_config

    (tmp_path / "c.yaml").write_text("eval:\n  evry: 3\n")
    with pytest.raises(ConfigError, match=r"eval\.evry.*did you mean 'eval\.every'"):
        load_train_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("xtts:\n  dropuot: 0.1\n")
    with pytest.raises(ConfigError, match="did you mean 'xtts.dropout'"):
        load_train_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("backend: nope\n")
    with pytest.raises(ConfigError, match="unknown backend 'nope'.*--backend"):
        load_train_config(tmp_path / "c.yaml")


def test_declared_ranges_are_checked_for_every_group_and_name_the_flag():
    from voicetune.backends.registry import train_config
    from voicetune.config import EvalOptions, check_fields, opt

    with pytest.raises(ConfigError, match=r"warmup_steps must lie in \[0, 10000000\], not -5; fix "
                       r"--warmup-steps"):
        TrainConfig(warmup_steps=-5)
    with pytest.raises(ConfigError, match="--eval-num-references"):
        EvalOptions(num_references=0)
    with pytest.raises(ConfigError, match="--early-stop-patience"):
        train_config(early_stop_patience=-1)
    with pytest.raises(ConfigError, match=r"lie in \[0, 1\].*--min-lr-ratio"):
        TrainConfig(min_lr_ratio=2.0)
    with pytest.raises(ConfigError, match="finite.*--lr"):
        TrainConfig(lr=float("inf"))

    import dataclasses

    @dataclasses.dataclass
    class Ranged:  # opt() stays backward compatible: positional default and help, keyword choices/cli
        n: int = opt(2, "A count.", low=1, high=4)
        kind: str = opt("a", "A kind.", choices=("a", "b"))

    check_fields(Ranged())
    with pytest.raises(ConfigError, match=r"n must lie in \[1, 4\], not 5"):
        check_fields(Ranged(n=5))


def test_each_backend_validates_its_own_options():
    from voicetune.backends.registry import train_config

    with pytest.raises(ConfigError, match="--lora-targets"):
        train_config(lora_targets="q_proj")  # an XTTS GPT has no q_proj (a CSM one would)
    with pytest.raises(ConfigError, match="--freeze"):
        train_config(freeze="decoder")
    with pytest.raises(ConfigError, match="drop --checkpoint-mlp"):
        train_config(checkpoint_mlp=True, gradient_checkpointing=True)
    fake = train_config(backend="fake", energy_weight=0.5)  # tests/backends/fake.py's options
    assert fake.backend_options.energy_weight == 0.5
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['dropout'\]"):
        train_config(backend="fake", dropout=0.1)  # an XTTS option: not the fake backend's


def test_what_may_change_on_resume_is_declared_with_the_options():
    from voicetune.backends.registry import train_config
    from voicetune.config import resumable_options

    allowed = resumable_options(train_config())
    assert {"max_steps", "save_every", "eval_every", "early_stop_patience", "fast_loss",
            "checkpoint_mlp"} <= allowed
    assert not {"lr", "batch_size", "seed", "dropout", "lora_targets", "backend"} & allowed


# ------------------------------------------------------------------ a backend's defaults of generic fields


def _register_recipe_backend():
    """The fake backend with options that carry their own defaults for generic fields (a recipe)."""
    from dataclasses import dataclass

    from backends.fake import FakeBackend, FakeOptions

    from voicetune.backends.registry import register_backend

    @dataclass
    class RecipeOptions(FakeOptions):
        @classmethod
        def generic_defaults(cls):
            return {"grad_clip": 4.0, "scheduler": "multistep", "milestones": [2, 4],
                    "milestone_unit": "epochs"}

    class RecipeBackend(FakeBackend):
        name = "recipe"
        options = RecipeOptions

    register_backend("recipe", RecipeBackend)


@pytest.fixture
def recipe_backend():
    from voicetune.backends.registry import unregister_backend

    _register_recipe_backend()
    yield "recipe"
    unregister_backend("recipe")


def test_a_backends_own_defaults_of_generic_fields_apply_where_the_user_set_nothing(recipe_backend, tmp_path):
    from voicetune.backends.registry import load_train_config, merge_options, train_config

    cfg = train_config(backend="recipe")
    got = (cfg.grad_clip, cfg.scheduler, cfg.milestones, cfg.milestone_unit)
    assert got == (4.0, "multistep", [2, 4], "epochs")
    assert cfg.lr == TrainConfig().lr  # a field the backend has no default for keeps the generic one
    mine = train_config(backend="recipe", grad_clip=0.5, scheduler="cosine")
    assert (mine.grad_clip, mine.scheduler, mine.milestone_unit) == (0.5, "cosine", "epochs")
    # switching backends moves the fields left at one backend's defaults to the other's; chosen values stay
    back = merge_options(cfg, {"backend": "fake"})
    assert (back.grad_clip, back.scheduler, back.milestones) == (TrainConfig().grad_clip, "constant", [])
    assert merge_options(mine, {"backend": "fake"}).grad_clip == 0.5
    # YAML: keys the file does not hold take the backend's defaults; a saved config round-trips exactly
    (tmp_path / "c.yaml").write_text("backend: recipe\ngrad_clip: 2.0\n")
    loaded = load_train_config(tmp_path / "c.yaml")
    assert (loaded.grad_clip, loaded.scheduler, loaded.milestones) == (2.0, "multistep", [2, 4])
    save_yaml(cfg, tmp_path / "saved.yaml")
    assert load_train_config(tmp_path / "saved.yaml") == cfg


def test_train_help_shows_the_backends_defaults(recipe_backend, capsys):
    from voicetune.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--backend", "recipe", "--help-all"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--grad-clip GRAD_CLIP" in text and "(default: 4.0)" in text and "(default: multistep)" in text


def test_generic_defaults_must_name_generic_fields():
    from dataclasses import dataclass

    from voicetune.config import BackendOptions, _generic_defaults

    @dataclass
    class Bad(BackendOptions):
        @classmethod
        def generic_defaults(cls):
            return {"dropout": 0.0}

    with pytest.raises(TypeError, match="dropout"):
        _generic_defaults(Bad)
