"""Evaluation stage: generate with one model, then score IFEval, AlpacaEval 2.0 and MT-Bench,
and (when configured) each answer's reward and the diversity of sampled answers.

``python -m pipelines.evaluate --config configs/evaluate_tiny.yaml key=value``. Generation is
``pipelines.generate`` (HF or vLLM backend) with the config's ``model``; judging goes to the
OpenAI-compatible endpoint in ``evaluation.judge`` (the API key is read from the environment variable it names, never from the file).
Writes ``<output_dir>/<benchmark>/summary.json`` per benchmark, ``reward/`` and ``diversity/``
(``pipelines.reward_diversity``) and ``<output_dir>/summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from evaluation import ifeval
from evaluation.alpaca_eval import evaluate as evaluate_alpaca
from evaluation.judge_limits import JudgeCircuitOpen, JudgeRequestsFailed
from evaluation.mt_bench import evaluate as evaluate_mt_bench
from evaluation.settings import JudgeConfig
from orpo.config import load_config
from orpo.modeling import resolve_model_path
from pipelines.config import Config
from pipelines.generate import generate, model_display_name
from pipelines.reward_diversity import measure_diversity, score_rewards


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score_ifeval(outputs: Path, prompts_path: str | None, out_dir: Path, on_missing_punkt: str) -> dict[str, Any]:
    """Score generated IFEval responses; write per-prompt scores and the summary."""
    records = {r["key"]: r for r in ifeval.load_prompts(prompts_path)}
    scores = []
    with (out_dir / "scores.jsonl").open("w") as f:
        for row in _read_jsonl(outputs):
            scored = ifeval.score(records[row["key"]], row["response"], on_missing_punkt=on_missing_punkt)
            scores.append(scored)
            f.write(json.dumps({"key": row["key"], **scored}, default=str) + "\n")
    return ifeval.aggregate(scores)


def evaluate(cfg: Config) -> dict[str, Any]:
    """Generate what is missing, score every selected benchmark, write and return the summary.

    A benchmark whose judge requests failed raises `JudgeRequestsFailed` once the other
    benchmarks have run (the breaker raises at once), so the stage fails and a rerun requests
    only the failed judgments; no overall summary is written then.
    """
    output_dir = Path(cfg.output_dir)
    paths = generate(cfg, output_dir / "generations")
    model_name = model_display_name(cfg, resolve_model_path(cfg.model, cfg.output_dir))
    summary: dict[str, Any] = {"model": model_name, "generations": {k: str(v) for k, v in paths.items()}}
    failures: list[JudgeRequestsFailed] = []
    for name, path in paths.items():
        bench_dir = output_dir / name
        bench_dir.mkdir(parents=True, exist_ok=True)
        try:
            result = _score(name, path, bench_dir, cfg, model_name)
        except JudgeCircuitOpen:
            raise
        except JudgeRequestsFailed as error:
            failures.append(error)
            (bench_dir / "summary.json").unlink(missing_ok=True)  # no stale result survives
            continue
        (bench_dir / "summary.json").write_text(json.dumps(result, indent=2, default=str))
        summary[name] = result
    if failures:
        raise failures[0] if len(failures) == 1 else JudgeRequestsFailed(
            [j for error in failures for j in error.failed], sum(e.total for e in failures),
            " and ".join(str(e.cache_path) for e in failures))
    if cfg.evaluation.reward is not None:
        summary["reward"] = score_rewards(cfg, paths, output_dir)
    if cfg.evaluation.diversity.enabled:
        summary["diversity"] = measure_diversity(cfg, output_dir)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _score(name: str, path: Path, bench_dir: Path, cfg: Config, model_name: str) -> dict[str, Any]:
    generation, settings = cfg.generation, cfg.evaluation
    if name == "ifeval":
        return score_ifeval(path, generation.ifeval.data_path, bench_dir, settings.ifeval_on_missing_punkt)
    if name == "alpaca_eval":
        bench_cfg = _with_judge(settings.alpaca_eval, settings.judge)
        if generation.alpaca_eval.limit is not None:
            bench_cfg = dataclasses.replace(bench_cfg, allow_subset=True)
        outputs = [{"instruction": r["instruction"], "output": r["output"]} for r in _read_jsonl(path)]
        return evaluate_alpaca(outputs, model_name, bench_cfg, bench_dir).summary
    answers = _read_jsonl(path)
    bench_cfg = dataclasses.replace(_with_judge(settings.mt_bench, settings.judge),
                                    question_ids=tuple(a["question_id"] for a in answers))
    return evaluate_mt_bench(answers, model_name, bench_cfg, bench_dir).summary


def _with_judge(bench_cfg: Any, judge: JudgeConfig | None) -> Any:
    return bench_cfg if judge is None else dataclasses.replace(bench_cfg, judge=judge)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.name_or_path=runs/x/export")
    args = parser.parse_args(argv)
    cfg = load_config(Config, args.config, args.overrides)
    summary = evaluate(cfg)
    print(f"evaluation summary written to {Path(cfg.output_dir) / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
