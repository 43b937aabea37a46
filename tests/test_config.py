"""The typed configuration: every config file variant converts, strictly, and round-trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

from flexavatar_jax.config import Config, DatasetConfig, LossTerm, ModelConfig, to_dict
from flexavatar_jax.configs import flexavatar, synthetic_data


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k != "dense_regions":
            out |= _keys(v, f"{prefix}{k}.")
    return out


@pytest.mark.parametrize("variant", flexavatar.VARIANTS)
def test_every_variant_converts_and_keeps_every_value(variant):
    raw = flexavatar.get_config(variant)
    config = Config.from_dict(raw)
    typed, given = to_dict(config), json.loads(raw.to_json_best_effort())
    # Every key of the file is a field, with its value (the typed form only adds defaults, and
    # data.synthetic.image_size = model.image_size).
    assert _keys(given) <= _keys(typed)
    flat = lambda tree, p="": {k: v for key, val in tree.items()  # noqa: E731
                               for k, v in (flat(val, f"{p}{key}.").items() if isinstance(val, dict)
                                            and key != "dense_regions" else [(p + key, val)])}
    typed_flat = flat(typed)
    for key, value in flat(given).items():
        assert typed_flat[key] == value, key
    assert config.data.synthetic.image_size == config.model.image_size


def test_json_round_trip_is_equal_and_hashable():
    config = Config.from_dict(flexavatar.get_config("base"))
    again = Config.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert hash(again.model) == hash(config.model)  # a static Linen field / jit key
    assert dict(config.model.dense_regions) == {"scalp": 2}


def test_unknown_fields_and_wrong_types_raise_naming_them():
    with pytest.raises(ValueError, match=r"model\.lifter\.windw"):
        Config.from_dict({"model": {"lifter": {"windw": 5}}})
    with pytest.raises(ValueError, match=r"train\.steps must be int"):
        Config.from_dict({"train": {"steps": "many"}})
    with pytest.raises(ValueError, match=r"model\.unet\.enabled must be bool"):
        Config.from_dict({"model": {"unet": {"enabled": 1}}})
    with pytest.raises(ValueError, match="compute_dtype"):
        Config.from_dict({"model": {"compute_dtype": "float16"}})
    with pytest.raises(ValueError, match="min_inputs"):
        Config.from_dict({"data": {"min_inputs": 3, "max_inputs": 2}})


def test_the_world_renders_what_the_model_reads():
    with pytest.raises(ValueError, match="image_size"):
        Config.from_dict({"model": {"image_size": 64}, "data": {"synthetic": {"image_size": 128}}})
    assert Config.from_dict({"model": {"image_size": 96}}).data.synthetic.image_size == 96


def test_configs_are_frozen_and_ints_widen_to_floats():
    config = Config.from_dict({"loss": {"l1": {"weight": 2}}})
    assert config.loss.l1 == LossTerm(2.0, 0, 0) and isinstance(config.loss.l1.weight, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.grid = 4  # type: ignore[misc]
    assert set(config.loss.terms()) == {f.name for f in dataclasses.fields(config.loss)} - {"perceptual_weights"}


def test_example_config_switches_annotations_on_for_camera_lifters():
    data = Config.from_dict(flexavatar.get_config("tiny")).data
    assert not data.example_config(False).input_annotations
    assert data.example_config(True).input_annotations
    assert data.example_config(False).num_targets == data.num_targets == 2


@pytest.mark.parametrize("variant", ("tiny", "base"))
def test_dataset_config_converts(variant):
    raw = synthetic_data.get_config(variant)
    config = DatasetConfig.from_dict(raw)
    assert config.synthetic.image_size == raw.synthetic.image_size and config.num_identities == raw.num_identities


def test_model_config_defaults_are_the_base_model():
    assert ModelConfig() == Config.from_dict(flexavatar.get_config("base")).model


def test_config_files_feature_mix_is_the_engines_default_and_overridable():
    from flexavatar_jax.data.appearance import FeatureMix

    assert flexavatar.FEATURE_MIX == dataclasses.asdict(FeatureMix())
    c = flexavatar.get_config("tiny")
    c.data.synthetic.hair_style_probs = (1.0, 0.0, 0.0, 0.0)
    config = Config.from_dict(c)
    assert config.data.synthetic.feature_mix().hair_style_probs == (1.0, 0.0, 0.0, 0.0)
    again = Config.from_dict(json.loads(json.dumps(config.to_dict())))  # checkpoints store it as JSON
    assert again == config and hash(again) == hash(config)
    assert DatasetConfig.from_dict(synthetic_data.get_config("tiny")).synthetic.feature_mix() == FeatureMix()
    c.data.synthetic.beard_probs = (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="beard_probs"):
        Config.from_dict(c)
