"""Config loading, overrides, size parsing and every rejection path."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lightgen.cli import app
from lightgen.config import (
    ConfigError,
    ExperimentConfig,
    available_presets,
    load_config,
    parse_size,
    size_label,
)


@pytest.mark.parametrize(
    "text,expected",
    [("100k", 100_000), ("100K", 100_000), ("2M", 2_000_000), ("100000", 100_000), (500, 500),
     ("1.5M", 1_500_000), (" 200k ", 200_000), (2e6, 2_000_000)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["abc", "1.5", "k", "-5", "10x", True, None, [1]])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_size_label():
    assert [size_label(n) for n in (100_000, 200_000, 500_000, 1_000_000, 2_000_000, 1_500, 50)] == [
        "100K", "200K", "500K", "1M", "2M", "1.5K", "50"]


def test_presets_load_and_differ():
    assert {"smoke", "lab", "paper"} <= set(available_presets())
    smoke, lab, paper = (load_config(n) for n in ("smoke", "lab", "paper"))
    assert smoke.model.size == "tiny" and lab.model.size == "small" and paper.model.size == "L"
    assert smoke.preset == "smoke"
    # the paper's recipe
    assert paper.data.resolution == 256 and paper.train.batch_size * paper.train.grad_accum == 2048
    assert paper.train.lr == 1e-4 and paper.train.betas == (0.9, 0.95)
    assert paper.train.weight_decay == 0.02 and paper.train.grad_clip == 3.0
    assert paper.train.ema_decay == 0.9999 and paper.train.iterations == 100_000
    assert paper.dpo.beta == 5000 and paper.world.kind == "real"


def test_overrides_apply_with_types():
    cfg = load_config("smoke", ["train.iterations=2000", "data.scale=200k", "dpo.beta=1e3",
                                "eval.checkpoints=[0.5, 1.0]", "model.size=small", "seed=3"])
    assert cfg.train.iterations == 2000 and cfg.data.scale == 200_000
    assert cfg.dpo.beta == 1000.0 and cfg.eval.checkpoints == [0.5, 1.0]
    assert cfg.model.size == "small" and cfg.seed == 3
    assert cfg.data.actual_size == 200  # smoke divisor 1000
    assert cfg.data.scale_label == "200K"


def test_flat_params_and_point_id():
    a = load_config("smoke")
    flat = a.flat()
    assert flat["data.scale"] == 100_000 and "train.iterations" in flat and "dpo.beta" in flat
    b = load_config("smoke", ["seed=7", "data.seed=3"])
    c = load_config("smoke", ["data.scale=200k"])
    assert a.point_id() == b.point_id()  # seeds are not part of a point's identity
    assert a.point_id() != c.point_id()


@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.iterations=abc", "train.iterations"),
        ("train.nonsense=1", "train.nonsense"),
        ("nosection.x=1", "nosection"),
        ("data.scale=-5", "data.scale"),
        ("data.scale=0", "data.scale"),
        ("data.caption_diversity=1.5", "data.caption_diversity"),
        ("dpo.beta=-1", "dpo.beta"),
        ("model.size=XL", "model.size"),
        ("world.kind=mars", "world.kind"),
        ("train.betas=[0.9, 1.2]", "train.betas"),
        ("eval.checkpoints=[0, 1]", "eval.checkpoints"),
        ("data.resolution=30", "data.resolution"),
        ("train.iterations", "key.sub=value"),
        ("train.iterations.x=3", "train.iterations"),
    ],
)
def test_rejections_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", [override])
    assert needle in str(e.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_malformed_yaml_and_non_mapping(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_yaml_is_parsed_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(p)


def test_unknown_key_in_file_lists_allowed(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("train:\n  iteratons: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.iteratons" in str(e.value) and "iterations" in str(e.value)


def test_resolution_must_divide_patch():
    with pytest.raises(ConfigError, match="patch_size"):
        load_config("smoke", ["data.resolution=34"])


def test_default_config_is_valid():
    cfg = ExperimentConfig()
    assert cfg.world.kind == "toy" and cfg.tracking.root == "mlruns"


runner = CliRunner()


@pytest.mark.parametrize(
    "override,needle",
    [("train.iterations=abc", "train.iterations"), ("train.bogus=1", "train.bogus"), ("data.scale=-5", "data.scale")],
)
def test_cli_train_rejects_bad_overrides(override, needle):
    res = runner.invoke(app, ["train", "experiments/smoke.yaml", "--set", override])
    assert res.exit_code == 2
    assert needle in res.output


def test_cli_help_lists_groups():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for group in ("data", "train", "dpo", "sample", "geneval", "sweep", "bench"):
        assert group in res.output
