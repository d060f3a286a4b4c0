"""One-command run end to end on the tiny model: base, sweep, train, evaluate, report; rerun resumes."""

import base64
import json
import math
import re

import pytest
import ray
import yaml

from orpo.config import load_config
from pipelines.config import Config
from pipelines.run import method_config, run_pipeline
from pipelines.sweep import sweep
from tests.conftest import SHARED_BENCHMARKS

pytestmark = [pytest.mark.slow, pytest.mark.distributed,
              pytest.mark.skipif(not SHARED_BENCHMARKS.exists(), reason="../shared/benchmarks is absent")]

SMALL = ["data.synthetic_size=300", "data.eval_fraction=0.1", "loop.max_steps=8",
         "loop.eval_steps=4", "loop.logging_steps=4", "loop.epochs=1",
         "sweep.space={loss.lam: {grid: [0.5, 2.0]}}", "sweep.objective=eval/rewards/accuracies",
         "generation.ifeval.limit=8", "generation.ifeval.decoding.max_new_tokens=16",
         "generation.alpaca_eval.limit=2", "generation.mt_bench.limit=1",
         # The base stage, shrunk like the rest: 2 × 100 conversations, 6 steps; no perplexity bar.
         "base.corpus_size=100", "base.eval_size=10", "base.overrides={loop.max_steps: 6, loop.eval_steps: 3}",
         "base.max_heldout_perplexity=null",
         "evaluation.diversity.limit=4", "evaluation.diversity.num_samples=2",
         "evaluation.diversity.max_new_tokens=8"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quick") / "run"
    cfg = load_config(Config, "configs/quickstart.yaml", [f"output_dir={run_dir}", *SMALL])
    paths = run_pipeline(cfg)
    yield cfg, run_dir, paths
    ray.shutdown()


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_report_numbers_agree_with_the_stage_outputs(finished_run):
    cfg, run_dir, paths = finished_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {k: v["status"] for k, v in manifest["stages"].items()} == {
        "base": "done", "data": "done", "sweep/orpo": "done", "train/orpo": "done", "train/sft": "done",
        "eval/orpo": "done", "eval/sft": "done"}
    assert "base corpus" in manifest["inputs"]
    assert manifest["versions"]["torch"].startswith("2.13") and manifest["inputs"]
    summary = json.loads(paths["summary"].read_text())
    for method in ("orpo", "sft"):
        evals = [r for r in _rows(run_dir / "train" / method / "metrics.jsonl") if "eval/logps/rejected" in r]
        logps = summary["methods"][method]["logps"]
        assert evals[0]["step"] == 0 and evals[-1]["step"] == 8
        assert logps["rejected_initial"] == pytest.approx(evals[0]["eval/logps/rejected"])
        assert logps["rejected_final"] == pytest.approx(evals[-1]["eval/logps/rejected"])
        assert logps["chosen_final"] == pytest.approx(evals[-1]["eval/logps/chosen"])
        scored = json.loads((run_dir / "eval" / method / "summary.json").read_text())
        assert summary["methods"][method]["ifeval"]["prompt_level_strict_acc"] == pytest.approx(
            scored["ifeval"]["prompt_level_strict_acc"])
        assert scored["ifeval"]["num_prompts"] == 8  # held-out synthetic prompts, scored by the checkers
    assert isinstance(summary["effect"]["verdict"], bool)

    # Every method starts from the one base: its export, and identical step-0 held-out log-probs.
    base_rows = _rows(run_dir / "base" / "train" / "metrics.jsonl")
    base_evals = [r for r in base_rows if "eval/nll" in r]
    assert base_evals[-1]["step"] == 6
    assert summary["base"]["heldout_perplexity"] == pytest.approx(math.exp(base_evals[-1]["eval/nll"]))
    assert summary["base"]["heldout_perplexity"] < summary["base"]["initial_heldout_perplexity"]
    base_config = yaml.safe_load((run_dir / "base" / "train" / "config.yaml").read_text())
    assert base_config["loss"]["type"] == "sft" and base_config["data"]["source"].endswith("corpus/train.jsonl")
    export = str(run_dir / "base" / "train" / "export")
    for method in ("orpo", "sft"):
        trained = yaml.safe_load((run_dir / "train" / method / "config.yaml").read_text())
        assert trained["model"]["name_or_path"] == export
    trial = yaml.safe_load(next((run_dir / "sweep" / "orpo" / "trials").glob("*/config.yaml")).read_text())
    assert trial["model"]["name_or_path"] == export
    starts = [summary["methods"][m]["logps"] for m in ("orpo", "sft")]
    assert starts[0]["chosen_initial"] == pytest.approx(starts[1]["chosen_initial"], abs=1e-4)
    assert starts[0]["rejected_initial"] == pytest.approx(starts[1]["rejected_initial"], abs=1e-4)
    assert summary["start"]["agree"] is True

    # Reward win rate against SFT from the verifiable score, and PID/AID from the bundled MiniLM.
    winrate = summary["methods"]["orpo"]["reward_winrate"]
    assert winrate["baseline"] == "sft" and winrate["reward"].startswith("verifiable") and winrate["n"] == 8
    assert 0.0 <= winrate["win_rate"] <= 1.0 and winrate["wins"] + winrate["ties"] + winrate["losses"] == 8
    for method in ("orpo", "sft"):
        diversity = summary["methods"][method]["diversity"]
        assert diversity["n_prompts"] == 4 and -1.0 <= diversity["pid"] <= 1.0 and -1.0 <= diversity["aid"] <= 1.0
        samples = _rows(run_dir / "eval" / method / "diversity" / "generations" / "ifeval.jsonl")
        assert len(samples) == 4 and all(len(r["outputs"]) == 2 for r in samples)
    best = json.loads((run_dir / "sweep" / "orpo" / "best.json").read_text())
    trials = json.loads((run_dir / "sweep" / "orpo" / "results.json").read_text())
    assert len(trials) == 2 and best["value"] == max(t["metrics"]["eval/rewards/accuracies"] for t in trials)
    orpo_config = yaml.safe_load((run_dir / "train" / "orpo" / "config.yaml").read_text())
    assert orpo_config["loss"]["lam"] == best["config"]["loss.lam"]  # trained with the sweep's best λ

    markdown = paths["markdown"].read_text()
    assert f"{summary['methods']['orpo']['logps']['rejected_final']:.4f}" in markdown
    html = paths["html"].read_text()
    assert "Pretrained base" in html and f"{summary['methods']['orpo']['diversity']['pid']:.4f}" in html
    assert f"{winrate['win_rate'] * 100:.2f}" in html
    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(images) >= 3
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_without_redoing_stages_and_sweeps_restore(finished_run):
    cfg, run_dir, _ = finished_run
    before = json.loads((run_dir / "manifest.json").read_text())["stages"]
    run_pipeline(cfg)
    after = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert after == before

    trial_metrics = sorted((run_dir / "sweep" / "orpo" / "trials").glob("*/metrics.jsonl"))
    sizes = [p.stat().st_size for p in trial_metrics]
    # Tuner.restore: the finished trials are not redone
    restored = sweep(method_config(cfg, cfg.methods[0], run_dir, run_dir / "sweep" / "orpo"))
    assert [p.stat().st_size for p in trial_metrics] == sizes
    assert restored["config"] == json.loads((run_dir / "sweep" / "orpo" / "best.json").read_text())["config"]

    changed = load_config(Config, "configs/quickstart.yaml", [f"output_dir={run_dir}", *SMALL,
                                                                       "loss.lam=0.3"])
    with pytest.raises(ValueError, match="different config"):
        run_pipeline(changed)
    other_base = load_config(Config, "configs/quickstart.yaml", [f"output_dir={run_dir}", *SMALL, "base.seed=5"])
    with pytest.raises(ValueError, match="different config"):
        run_pipeline(other_base)
