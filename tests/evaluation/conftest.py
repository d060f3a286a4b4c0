"""Fixtures for judge tests: the FIXTURE judge on loopback, judge configs, benchmark paths."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import pytest

from evaluation.fixture_judge import FixtureJudgeConfig, FixtureJudgeServer, serve_fixture_judge
from evaluation.judges import JudgeConfig

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"
API_KEY_ENV = "FIXTURE_JUDGE_TEST_API_KEY"
API_KEY = "sk-fixture-SECRET-never-log-7f3a9c"


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The key lives only in the environment, as in production."""
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    return API_KEY


@pytest.fixture
def start_judge(api_key: str) -> Iterator[Callable[..., FixtureJudgeServer]]:
    """`start_judge(**faults)` runs a fixture judge (requiring the test key) until the test ends."""
    with contextlib.ExitStack() as stack:

        def start(**faults) -> FixtureJudgeServer:
            config = FixtureJudgeConfig(required_api_key=api_key, **faults)
            return stack.enter_context(serve_fixture_judge(config))

        yield start


@pytest.fixture
def judge_config(tmp_path: Path) -> Callable[..., JudgeConfig]:
    """`judge_config(server, **overrides)`: fast backoff, a cache in tmp_path, no progress bar."""

    def make(server: FixtureJudgeServer, **overrides) -> JudgeConfig:
        settings = dict(
            base_url=server.base_url,
            model="fixture-judge",
            api_key_env=API_KEY_ENV,
            concurrency=4,
            max_retries=6,
            backoff_initial_s=0.001,
            backoff_max_s=0.01,
            timeout_s=10.0,
            cache_path=str(tmp_path / "judge_cache.jsonl"),
            progress=False,
        )
        settings.update(overrides)
        return JudgeConfig(**settings)

    return make


def _shared_file(*parts: str) -> Path:
    path = SHARED_BENCHMARKS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared benchmark file absent: {path}")
    return path


@pytest.fixture
def alpaca_reference_path() -> Path:
    return _shared_file("alpaca_eval", "gpt4_1106_preview_outputs.json")


@pytest.fixture
def mt_bench_dir() -> Path:
    for name in ("question.jsonl", "judge_prompts.jsonl", "reference_answer_gpt-4.jsonl"):
        _shared_file("mt_bench", name)
    return SHARED_BENCHMARKS / "mt_bench"
