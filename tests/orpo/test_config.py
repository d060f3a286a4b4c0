"""Typed config: YAML, overrides, unknown keys and wrong types rejected with the key named."""

import pytest

from orpo.config import ConfigError, load_config, to_dict
from orpo.logps import NllSpan
from orpo.losses import LossType
from orpo.trainer_config import TrainConfig


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  type: simpo\n  beta: 2.5\noptim:\n  lr: 5e-6\ntrain:\n  micro_batch_size: 4\n")
    cfg = load_config(TrainConfig, path, ["loss.gamma_beta_ratio=0.55", "loss.nll_span=response",
                                          "data.columns.prompt=question", "optim.adam_betas=[0.9, 0.95]"])
    assert cfg.loss.type is LossType.SIMPO and cfg.loss.beta == 2.5 and cfg.loss.gamma_beta_ratio == 0.55
    assert cfg.optim.lr == 5e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.loss.nll_span is NllSpan.RESPONSE and cfg.data.columns.prompt == "question"
    assert cfg.optim.adam_betas == [0.9, 0.95] and cfg.train.micro_batch_size == 4
    assert load_config(TrainConfig, None, []) == TrainConfig()


@pytest.mark.parametrize("override,message", [
    ("train.micro_batch_sise=4", "unknown config key 'train.micro_batch_sise'"),
    ("loss.type=ppo", "'loss.type' must be one of"),
    ("train.epochs=two", "'train.epochs' must be int"),
    ("optim.schedule=step", "'optim.schedule' must be one of"),
    ("model.lora.r=true", "'model.lora.r' must be int"),
    ("nonsense", "not of the form key=value"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(TrainConfig, None, [override])


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sourse: x.jsonl\n")
    with pytest.raises(ConfigError, match="unknown config key 'data.sourse'"):
        load_config(TrainConfig, path)


def test_accumulation_is_derived_and_checked():
    cfg = TrainConfig()
    cfg.train.micro_batch_size, cfg.train.global_batch_size = 2, 16
    assert cfg.train.accumulation_steps(world_size=2) == 4
    with pytest.raises(ValueError, match="not a multiple"):
        cfg.train.accumulation_steps(world_size=3)


def test_round_trip_through_dict():
    cfg = load_config(TrainConfig, None, ["loss.type=dpo"])
    assert to_dict(cfg)["loss"]["type"] == "dpo"
    from orpo.config import from_dict
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
