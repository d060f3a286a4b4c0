"""The paths real runs take, through ``pipelines.train`` on Ray: LoRA export, DPO under ZeRO-3 with a
live and a precomputed reference, and one train/eval split for both launchers."""

import json

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from orpo.config import load_config
from orpo.train_local import prepare_data
from pipelines import data as data_pipeline
from pipelines.config import Config
from pipelines.ray_runtime import start_local_ray
from pipelines.train import run

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def shared_ray():
    start_local_ray(4, runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    yield
    ray.shutdown()


def _cfg(out, model_dir, *overrides):
    return load_config(Config, "configs/tiny_cpu.yaml", [
        f"output_dir={out}", f"model.name_or_path={model_dir}", "data.synthetic_size=200", "loop.logging_steps=1",
        "loop.eval_steps=null", "loop.eval_at_start=false", "loop.save_steps=null", *overrides])


def _train_losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_lora_under_ray_exports_the_trained_model(tmp_path, tiny_model_dir, shared_ray, zero_stage):
    """Ray used to save the PEFT wrapper's keys under the base model: on reload every tensor was
    missing and freshly initialised. Now the merged export loads with no missing key; the weights
    LoRA does not touch are the base's exactly, and each adapted weight moved by a delta of rank <= r
    (merged W = W0 + B·A·α/r), which is what a merge, and only a merge, produces."""
    out = tmp_path / "lora"
    run(_cfg(out, tiny_model_dir, "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8",
             "model.lora.dropout=0.0", "loop.max_steps=3", "optim.lr=1e-2", f"deepspeed.zero_stage={zero_stage}"))
    merged, info = AutoModelForCausalLM.from_pretrained(out / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    adapted = 0
    for name, weight in merged.named_parameters():
        delta = (weight.detach() - base[name].detach()).double()
        if name.endswith("proj.weight"):  # every linear layer but the LM head ("all-linear")
            assert 0 < torch.linalg.matrix_rank(delta, rtol=1e-4) <= 4, name
            adapted += 1
        else:
            assert torch.equal(weight, base[name]), name
    assert adapted == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers


def test_lora_adapter_export_under_ray_reloads(tmp_path, tiny_model_dir, shared_ray):
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "adapter"
    run(_cfg(out, tiny_model_dir, "model.lora.enabled=true", "model.lora.r=4", "model.lora.save=adapter",
             "loop.max_steps=2", "optim.lr=1e-2"))
    assert (out / "export" / "adapter_model.safetensors").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(out / "export")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())  # B starts at 0


def test_dpo_under_zero3_with_a_live_and_a_precomputed_reference(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                 shared_ray):
    """DPO under ZeRO-3 used to crash ('weight' must be 2-D: the reference was partitioned but never
    wrapped), and the Ray path ignored ``loss.precompute_reference``. Both now train, starting at
    -log σ(0) = ln 2 (policy == reference at step 1), and the precomputed log-probs equal the
    reference model's own, computed here in one plain process."""
    from orpo.collate import PreferenceCollator
    from orpo.logps import concatenated_forward

    common = ["loss.type=dpo", "deepspeed.zero_stage=3", "loop.max_steps=3"]
    live, pre = tmp_path / "live", tmp_path / "pre"
    run(_cfg(live, tiny_model_dir, *common))
    run(_cfg(pre, tiny_model_dir, *common, "loss.precompute_reference=true"))
    assert _train_losses(live)[0] == pytest.approx(0.6931472, abs=1e-4)
    assert _train_losses(pre)[0] == pytest.approx(0.6931472, abs=1e-4)

    rows = ray.data.read_parquet(str(pre / "reference_logps" / "train")).take(8)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logps = concatenated_forward(reference, PreferenceCollator(tiny_tokenizer.pad_token_id)(rows))
    torch.testing.assert_close(torch.tensor([r["ref_chosen_logps"] for r in rows]), logps.chosen.sum,
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.tensor([r["ref_rejected_logps"] for r in rows]), logps.rejected.sum,
                               rtol=1e-5, atol=1e-4)


def test_both_launchers_split_the_same_config_the_same_way(tmp_path, tiny_model_dir, tiny_tokenizer, shared_ray):
    """The local launcher used to shuffle, the Ray one hash: the same config evaluated on different
    pairs. Both now assign each record by the same seeded hash of its source position."""
    source = tmp_path / "pairs.jsonl"
    from orpo.synthetic import make_preference_records

    records = make_preference_records(120, seed=9)
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = _cfg(tmp_path / "run", tiny_model_dir, f"data.source={source}", "data.eval_fraction=0.2")
    local_train, local_eval, _ = prepare_data(cfg.data, tiny_tokenizer, tmp_path)
    data_pipeline.preprocess(cfg.data, cfg.data_pipeline, str(tiny_model_dir), False, tmp_path / "ray")

    def ray_rows(split):
        dataset = data_pipeline.split_dataset(tmp_path / "ray", split, seed=0)
        return sorted((row["source"], row["index"]) for row in dataset.iter_rows())

    assert ray_rows("eval") == sorted((ex["source"], ex["index"]) for ex in local_eval.examples)
    assert ray_rows("train") == sorted((ex["source"], ex["index"]) for ex in local_train.examples)
    assert 10 < len(local_eval.examples) < 40
