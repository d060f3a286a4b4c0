"""Fixtures for judge tests: the FIXTURE judge on loopback, judge configs, benchmark paths."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import langdetect
import nltk
import pytest

from evaluation.fixture_judge import FixtureJudgeConfig, FixtureJudgeServer, serve_fixture_judge
from evaluation.ifeval import util
from evaluation.judges import JudgeConfig
from tests.evaluation.ifeval_reference import clear_punkt_caches

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
            timeout_s=120.0,  # a budget for a loaded machine; the timeout test sets its own
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


# The official IFEval implementation (lm_eval's copy), for the parity tests.

@pytest.fixture(scope="module")
def official():
    """lm_eval's `instructions_registry` and `utils` modules, imported without a download."""
    pytest.importorskip("lm_eval", reason="lm_eval (the reference implementation) not installed")
    # instructions_util calls nltk.download("punkt_tab") at import when the model is missing.
    with mock.patch.object(nltk, "download", return_value=False):
        registry = importlib.import_module("lm_eval.tasks.ifeval.instructions_registry")
        utils = importlib.import_module("lm_eval.tasks.ifeval.utils")
    return registry, utils


@pytest.fixture(scope="module")
def seeded_langdetect():
    # The official checkers use langdetect's global, unseeded factory; ours is seeded.
    # Giving the global one the same seed makes their draws identical.
    previous = langdetect.DetectorFactory.seed
    langdetect.DetectorFactory.seed = util.LANGDETECT_SEED
    yield
    langdetect.DetectorFactory.seed = previous




@pytest.fixture
def stand_in_punkt(official, tmp_path, monkeypatch):
    """A tiny Punkt model (three abbreviations, nothing learned) in front of nltk's data path.

    Not the real model, so the counts are not the real ones; but both sides
    load it the same way, which exercises our Punkt code path without the download.
    """
    model = tmp_path / "tokenizers/punkt_tab/english"
    model.mkdir(parents=True)
    (model / "abbrev_types.txt").write_text("dr\nmr\ne.g\n")
    for empty in ("collocations.tab", "sent_starters.txt", "ortho_context.tab"):
        (model / empty).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path), *nltk.data.path])
    clear_punkt_caches()
    yield
    monkeypatch.undo()
    clear_punkt_caches()
