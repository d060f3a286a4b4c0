"""The config root: YAML, overrides and typed replacement; unknown keys, wrong types and bad values named."""

import pytest

from orpo.config import ConfigError, from_dict, load_config, replace_values, to_dict
from orpo.logps import NllSpan
from orpo.losses import LossType
from pipelines.config import Config, MethodConfig


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  type: simpo\n  beta: 2.5\noptim:\n  lr: 5e-6\nloop:\n  micro_batch_size: 4\n")
    cfg = load_config(Config, path, ["loss.gamma_beta_ratio=0.55", "loss.nll_span=response",
                                     "data.columns.prompt=question", "optim.adam_betas=[0.9, 0.95]"])
    assert cfg.loss.type is LossType.SIMPO and cfg.loss.beta == 2.5 and cfg.loss.gamma_beta_ratio == 0.55
    assert cfg.optim.lr == 5e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.loss.nll_span is NllSpan.RESPONSE and cfg.data.columns.prompt == "question"
    assert cfg.optim.adam_betas == [0.9, 0.95] and cfg.loop.micro_batch_size == 4
    assert load_config(Config, None, []) == Config()


@pytest.mark.parametrize("override,message", [
    ("loop.micro_batch_sise=4", "unknown config key 'loop.micro_batch_sise'"),
    ("train.max_steps=4", "unknown config key 'train'"),  # the loop section is `loop`
    ("deepspeed.enabled=true", "unknown config key 'deepspeed.enabled'"),
    ("loss.type=ppo", "'loss.type' must be one of"),
    ("loop.epochs=two", "'loop.epochs' must be int"),
    ("optim.schedule=step", "'optim.schedule' must be one of"),
    ("model.lora.r=true", "'model.lora.r' must be int"),
    ("nonsense", "not of the form key=value"),
    ("optim.adam_betas=[0.9", "override 'optim.adam_betas': the value '[0.9' is not valid YAML"),
    # Range checks at load, each naming its key (they used to fail later, or not at all).
    ("optim.lr=-1", "'optim.lr' must be > 0"),
    ("loss.lam=-0.5", "'loss.lam' must be >= 0"),
    ("data.eval_fraction=1.5", "'data.eval_fraction' must be in"),
    ("loop.micro_batch_size=0", "'loop.micro_batch_size' must be > 0"),
    ("loop.logging_steps=0", "'loop.logging_steps' must be > 0"),
    ("scaling.num_workers=0", "'scaling.num_workers' must be > 0"),
    ("loss.beta=0", "'loss.beta' must be > 0"),
    ("deepspeed.offload_param=true", "'deepspeed.offload_param' needs deepspeed.zero_stage=3"),
    ("sweep.objective=eval/loss", "'sweep.objective' must be one of"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(Config, None, [override])


def test_unknown_yaml_key_and_bad_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sourse: x.jsonl\n")
    with pytest.raises(ConfigError, match="unknown config key 'data.sourse'"):
        load_config(Config, path)
    path.write_text("data: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Config, path)


def test_accumulation_and_steps_are_derived_and_checked():
    cfg = replace_values(Config(), {"loop.micro_batch_size": 2, "loop.global_batch_size": 16, "loop.max_steps": 5})
    assert cfg.loop.accumulation_steps(world_size=2) == 4
    assert cfg.loop.steps_per_epoch(train_pairs=100, world_size=2) == 6  # 100 // 2 ranks // 2 = 25 micro-batches, // 4 = 6
    assert cfg.loop.total_steps(steps_per_epoch=3) == 3 and cfg.loop.total_steps(steps_per_epoch=9) == 5
    with pytest.raises(ValueError, match="not a multiple"):
        cfg.loop.accumulation_steps(world_size=3)
    with pytest.raises(ValueError, match="no full step"):
        cfg.loop.steps_per_epoch(train_pairs=15, world_size=2)


def test_round_trip_through_dict():
    cfg = load_config(Config, None, ["loss.type=dpo"])
    assert to_dict(cfg)["loss"]["type"] == "dpo"
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_replace_values_is_typed_and_names_bad_keys():
    cfg = replace_values(Config(), {"loss.lam": 2, "loss.type": "simpo", "output_dir": "x"})
    assert cfg.loss.lam == 2.0 and isinstance(cfg.loss.lam, float) and cfg.loss.type is LossType.SIMPO
    assert Config().loss.lam == 0.1  # a copy: the original is untouched
    with pytest.raises(ConfigError, match="unknown config key 'loss.lamda'"):
        replace_values(cfg, {"loss.lamda": 1.0})
    with pytest.raises(ConfigError, match="'loop.max_steps' must be int"):
        replace_values(cfg, {"loop.max_steps": "many"})
    with pytest.raises(ConfigError, match="'loss.lam' must be >= 0"):
        replace_values(cfg, {"loss.lam": -1.0})


def test_beta_defaults_come_from_the_loss_type():
    """DPO's β is a KL strength (0.1); SimPO's is a reward scale (2.0): one default cannot serve both."""
    assert load_config(Config, None, ["loss.type=dpo"]).loss.beta_value() == 0.1
    simpo = load_config(Config, None, ["loss.type=simpo"])
    assert simpo.loss.beta_value() == 2.0
    # The default follows the type through composition: nothing is resolved and frozen early.
    assert replace_values(simpo, {"loss.type": "dpo"}).loss.beta_value() == 0.1
    assert load_config(Config, None, ["loss.type=simpo", "loss.beta=10"]).loss.beta_value() == 10.0
    with pytest.raises(ValueError, match="has no β"):
        Config().loss.beta_value()


@pytest.mark.parametrize("name", ["/abs/path", "..", "../up", "a/b", "", "sp ace"])
def test_method_names_must_be_plain(name):
    with pytest.raises(ConfigError, match="'methods.name' must be a plain name"):
        MethodConfig(name)


def test_method_names_unique_and_overrides_checked_at_load():
    with pytest.raises(ConfigError, match="the name 'orpo' is used twice"):
        Config(methods=[MethodConfig("orpo"), MethodConfig("orpo", {"loss.type": "sft"})])
    with pytest.raises(ConfigError, match="'loss.type' must be one of"):
        Config(methods=[MethodConfig("bad", {"loss.type": "ppo"})])
    with pytest.raises(ConfigError, match="unknown config key 'loss.lamda'"):
        load_config(Config, None, ["methods=[{name: x, overrides: {loss.lamda: 1}}]"])
