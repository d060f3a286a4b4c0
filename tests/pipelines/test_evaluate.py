"""The evaluation entry point end to end: tiny model, HF backend, fixture judge on loopback."""

import json

import pytest

from evaluation.fixture_judge import FixtureJudgeConfig, serve_fixture_judge
from orpo.config import load_config
from pipelines.config import Config
from pipelines.evaluate import evaluate
from tests.conftest import SHARED_BENCHMARKS

pytestmark = [pytest.mark.slow, pytest.mark.distributed,
              pytest.mark.skipif(not SHARED_BENCHMARKS.exists(), reason="../shared/benchmarks is absent")]


@pytest.fixture
def own_ray():
    """``evaluate`` starts a private Ray; shut it so later modules can start theirs."""
    import ray

    yield
    ray.shutdown()


def test_evaluate_generates_and_scores_every_benchmark(tmp_path, tiny_model_dir, own_ray):
    with serve_fixture_judge(FixtureJudgeConfig(fail_429_every=5)) as judge:
        cfg = load_config(Config, "configs/evaluate_tiny.yaml", [
            f"output_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}", f"evaluation.judge.base_url={judge.base_url}"])
        summary = evaluate(cfg)
        requests_first_run = judge.stats.requests
        assert requests_first_run > 0
        again = evaluate(cfg)  # generation resumes and judgments come from the cache: nothing new
        assert judge.stats.requests == requests_first_run
    assert again["mt_bench"]["overall"] == summary["mt_bench"]["overall"]
    ifeval = summary["ifeval"]
    assert ifeval["num_prompts"] == 4
    assert 0.0 <= ifeval["prompt_level_strict_acc"] <= ifeval["prompt_level_loose_acc"] <= 1.0
    assert 0.0 <= summary["alpaca_eval"]["win_rate"] <= 100.0
    assert summary["alpaca_eval"]["n_total"] + summary["alpaca_eval"]["n_unparseable"] >= 4
    assert summary["mt_bench"]["n_judgments"] == 4  # 2 questions x 2 turns
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk) >= {"model", "generations", "ifeval", "alpaca_eval", "mt_bench"}
    assert (tmp_path / "alpaca_eval" / "model_outputs.json").exists()
    assert (tmp_path / "mt_bench" / "category_radar.png").exists()
