import pytest

from components.config import load_config, parse_override
from components.errors import ConfigError
from tests.conftest import REPO


def test_repo_params_load_and_match_defaults():
    assert load_config(REPO / "params.yaml") == load_config(None)


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"params.yaml: train.epoch: unknown key"):
        load_config(p)


def test_out_of_range_value_names_key_and_limit(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.epochs" in str(e.value) and "greater than or equal to 1" in str(e.value) and "got 0" in str(e.value)


def test_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.scheduler=step"])
    assert "train.scheduler" in str(e.value) and "'onecycle'" in str(e.value) and "'cosine'" in str(e.value)


def test_malformed_yaml_names_line(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  epochs: [3\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_config(p)


def test_top_level_must_be_mapping(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p)


def test_overrides_are_yaml_typed():
    cfg = load_config(None, ["train.epochs=3", "model.hidden=[16, 8]", "augment.enabled=false"])
    assert cfg.train.epochs == 3 and cfg.model.hidden == (16, 8) and cfg.augment.enabled is False
    assert parse_override("data.source=csv:a=b.csv") == (["data", "source"], "csv:a=b.csv")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


def test_image_size_bounds():
    with pytest.raises(ConfigError, match="image_size"):
        load_config(None, ["data.image_size=[2, 2]"])
