"""The GPU recipes in configs/ load, carry the papers' values, and fit one 8-GPU node.

The expected values are the sources' own, read from them for the recipes (see each file's header):
- ORPO (arXiv 2403.07691) and xfactlab/orpo scripts/run_mistral_orpo_beta.sh: λ 0.1, lr 5e-6,
  inverse_sqrt, 200 warmup steps, 5 epochs, max length 2048, prompt 1792, global batch 4 × 8 = 32.
- The paper's λ for Llama-2 (0.2) and Phi-2 (0.25); their other settings copy the Mistral script.
- princeton-nlp/SimPO training_configs/llama-3-8b-instruct-simpo.yaml: β 2.5, γ/β 0.55, lr 1e-6,
  cosine, warmup_ratio 0.1, 1 epoch, 2048 / 1800, global batch 2 × 16 × 4 GPUs = 128.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from orpo.config import load_config, to_dict
from orpo.losses import LossType
from pipelines.config import Config

REPO = Path(__file__).resolve().parents[2]
UF = "hf:HuggingFaceH4/ultrafeedback_binarized"
ORPO_SCRIPT = {  # xfactlab/orpo scripts/run_mistral_orpo_beta.sh
    "loss.type": LossType.ORPO,
    "loss.nll_span": "prompt_and_response",
    "optim.lr": 5e-6,
    "optim.schedule": "inverse_sqrt",
    "optim.warmup_steps": 200,
    "optim.weight_decay": 0.0,
    "optim.max_grad_norm": 1.0,
    "loop.epochs": 5,
    "loop.global_batch_size": 32,
    "data.max_length": 2048,
    "data.max_prompt_length": 1792,
    "data.source": UF,
    "data.split": "train_prefs",
    "data.eval_source": UF,
    "data.eval_split": "test_prefs",
}
EXPECTED = {
    "configs/mistral7b_orpo_ultrafeedback.yaml": {
        **ORPO_SCRIPT,
        "model.name_or_path": "mistralai/Mistral-7B-v0.1",
        "loss.lam": 0.1,
        "deepspeed.zero_stage": 3,
    },
    "configs/llama2_7b_orpo.yaml": {
        **ORPO_SCRIPT,
        "model.name_or_path": "meta-llama/Llama-2-7b-hf",
        "loss.lam": 0.2,
        "deepspeed.zero_stage": 3,
    },
    "configs/phi2_orpo.yaml": {
        **ORPO_SCRIPT,
        "model.name_or_path": "microsoft/phi-2",
        "loss.lam": 0.25,
        "deepspeed.zero_stage": 2,  # 2.7B: ZeRO-2 fits, see the file
    },
    "configs/llama3_8b_instruct_simpo.yaml": {
        "model.name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct",
        "loss.type": LossType.SIMPO,
        "loss.beta": 2.5,
        "loss.gamma_beta_ratio": 0.55,
        "loss.label_smoothing": 0.0,
        "optim.lr": 1e-6,
        "optim.schedule": "cosine",
        "optim.weight_decay": 0.0,
        "optim.max_grad_norm": 1.0,
        "loop.epochs": 1,
        "loop.global_batch_size": 128,
        "data.max_length": 2048,
        "data.max_prompt_length": 1800,
        "data.source": "hf:princeton-nlp/llama3-ultrafeedback",
        "data.split": "train",
        "data.eval_source": "hf:princeton-nlp/llama3-ultrafeedback",
        "data.eval_split": "test",
        "deepspeed.zero_stage": 3,
    },
}
CITATIONS = {
    "configs/mistral7b_orpo_ultrafeedback.yaml": [
        "2403.07691",
        "xfactlab/orpo",
        "run_mistral_orpo_beta.sh",
    ],
    "configs/llama2_7b_orpo.yaml": ["2403.07691", "OUR CHOICE"],
    "configs/phi2_orpo.yaml": ["2403.07691", "OUR CHOICE"],
    "configs/llama3_8b_instruct_simpo.yaml": [
        "2405.14734",
        "princeton-nlp/SimPO",
        "llama-3-8b-instruct-simpo.yaml",
    ],
}
# SimPO's warmup_ratio 0.1 as steps: ≈ 59,900 training pairs (hub viewer) / 128 per step, 1 epoch.
LLAMA3_UF_TRAIN_PAIRS = 59_900


def load(recipe: str) -> Config:
    return load_config(Config, REPO / recipe)


def get(cfg: Config, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_has_the_sources_values(recipe):
    cfg = load(recipe)
    for dotted, expected in EXPECTED[recipe].items():
        actual = get(cfg, dotted)
        if isinstance(expected, float):
            assert actual == pytest.approx(expected, rel=1e-12), (
                f"{recipe}: {dotted}={actual}, expected {expected}"
            )
        else:
            assert actual == expected, f"{recipe}: {dotted}={actual!r}, expected {expected!r}"


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_cites_its_source(recipe):
    text = (REPO / recipe).read_text()
    for citation in CITATIONS[recipe]:
        assert citation in text, f"{recipe} does not cite {citation!r}"


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_runs_on_one_node_of_eight_gpus(recipe):
    cfg = load(recipe)
    assert cfg.scaling.num_workers == 8 and cfg.scaling.use_gpu
    assert cfg.scaling.resources_per_worker == {"GPU": 1.0, "CPU": 8.0}
    assert cfg.deepspeed.bf16 == "auto"
    assert cfg.deepspeed.torch_adam is False  # DeepSpeed's fused Adam on GPU
    assert cfg.model.gradient_checkpointing and cfg.model.attn_implementation in (
        "sdpa",
        "flash_attention_2",
    )
    assert (
        cfg.model.dtype == "auto" and not cfg.model.trust_remote_code and not cfg.model.lora.enabled
    )
    # ray job submit / RAY_ADDRESS decide where it runs; nothing local is baked in.
    assert cfg.ray.address is None and cfg.ray.num_cpus is None and cfg.ray.runtime_env == {}
    assert cfg.checkpoint.storage_path and cfg.checkpoint.storage_path.startswith(
        ("s3://", "gs://", "/")
    )
    assert cfg.output_dir.startswith("/mnt/shared/"), (
        "output_dir must be on the filesystem every node mounts"
    )
    assert cfg.name and cfg.output_dir.endswith(cfg.name)


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_global_batch_divides_over_eight_workers(recipe):
    cfg = load(recipe)
    per_step = cfg.loop.micro_batch_size * cfg.scaling.num_workers
    assert cfg.loop.global_batch_size % per_step == 0
    assert (
        cfg.loop.accumulation_steps(cfg.scaling.num_workers) * per_step
        == cfg.loop.global_batch_size
    )


def test_accumulation_steps_match_the_reference_runs():
    """Mistral: 4 × 8 workers × 1 = 32 (script: 8 × 4 GPUs × 1).
    SimPO: 2 × 8 × 8 = 128 (reference: 2 × 4 GPUs × 16)."""
    mistral = load("configs/mistral7b_orpo_ultrafeedback.yaml")
    simpo = load("configs/llama3_8b_instruct_simpo.yaml")
    assert (mistral.loop.micro_batch_size, mistral.loop.accumulation_steps(8)) == (4, 1)
    assert (simpo.loop.micro_batch_size, simpo.loop.accumulation_steps(8)) == (2, 8)


def test_documented_two_node_override_keeps_the_global_batch():
    """README: Mistral on 2 nodes is scaling.num_workers=16 train.micro_batch_size=2,
    so 2 × 16 × 1 = 32."""
    cfg = load_config(
        Config,
        REPO / "configs/mistral7b_orpo_ultrafeedback.yaml",
        ["scaling.num_workers=16", "loop.micro_batch_size=2"],
    )
    assert cfg.loop.accumulation_steps(16) == 1 and cfg.loop.global_batch_size == 32
    with pytest.raises(
        ValueError, match="not a multiple"
    ):  # without lowering micro: 32 % (4 × 16) != 0
        load("configs/mistral7b_orpo_ultrafeedback.yaml").loop.accumulation_steps(16)


def test_simpo_warmup_steps_are_its_warmup_ratio():
    """warmup_ratio 0.1 of one epoch: 59,900 // 128 = 467 steps; 0.1 × 467 = 46.7 -> 47."""
    cfg = load("configs/llama3_8b_instruct_simpo.yaml")
    steps = LLAMA3_UF_TRAIN_PAIRS // cfg.loop.global_batch_size * cfg.loop.epochs
    assert steps == 467
    assert cfg.optim.warmup_steps == round(0.1 * steps) == 47


def test_recipes_round_trip_through_to_dict():
    """What pipelines.train writes to <output_dir>/config.yaml loads back to the same config."""
    from orpo.config import from_dict

    for recipe in EXPECTED:
        cfg = load(recipe)
        assert from_dict(Config, to_dict(cfg)) == cfg
