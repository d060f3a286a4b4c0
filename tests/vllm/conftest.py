"""The vLLM group: the real engine (tests need the `vllm` package, which the main environment
lacks). Elsewhere these tests skip; under `ORPO_REQUIRE_VLLM=1` (.ci/vllm, in .venv-vllm) they
must run, so a vLLM that does not import fails the group instead of skipping it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REQUIRE_VLLM = os.environ.get("ORPO_REQUIRE_VLLM") == "1"
if REQUIRE_VLLM:
    import vllm  # noqa: F401  (fails the collection with vLLM's own import error)
HAVE_VLLM = REQUIRE_VLLM or importlib.util.find_spec("vllm") is not None
HERE = Path(__file__).resolve().parent

# The CPU build's KV cache (GiB): the default takes a large share of a small machine's memory.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.vllm)
        item.add_marker(pytest.mark.slow)
        if not HAVE_VLLM:
            item.add_marker(pytest.mark.skip(reason="vllm is not installed (run .ci/vllm)"))


@pytest.fixture(scope="session")
def judge_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama the CPU engine accepts (head_dim 64: hidden 128, 2 heads) with room for the
    judges' long prompts (8192 positions; rotary, so no weights change), made into a judge whose
    first token is always AlpacaEval's label `m`, with `M` second.

    A random model's top-5 almost never holds either label, so every pairwise verdict would be
    unparseable. Here every embedding carries a large constant component along hidden unit 0,
    so the final norm's output points along it whatever the prompt, and only the two labels'
    output rows have weight there: logits about sqrt(128) x (2, 1.8) = (22.6, 20.4) against ~0.
    Its MT-Bench judgments (`mmmm...`, no `[[rating]]`) stay unparseable: both paths are exercised.
    """
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orpo.tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("judge") / "model", hidden_size=128, num_heads=2, seed=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    first, second = (tokenizer.convert_tokens_to_ids(label) for label in ("m", "M"))
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 1000.0
        head = model.get_output_embeddings().weight
        head[:, 0] = 0.0
        head[first, 0], head[second, 0] = 2.0, 1.8
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path
