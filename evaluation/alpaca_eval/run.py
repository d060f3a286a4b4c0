"""AlpacaEval 2.0 end to end: pair outputs with the reference, judge (cached), score, aggregate."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evaluation.alpaca_eval.annotator import (
    AnnotatorConfig,
    Comparison,
    annotation_needs_judge,
    judge_request,
    score,
)
from evaluation.alpaca_eval.data import (
    N_INSTRUCTIONS,
    load_reference_outputs,
    make_comparisons,
    model_output_records,
    write_model_outputs,
)
from evaluation.alpaca_eval.metrics import aggregate
from evaluation.judges import JudgeClient, raise_for_failures
from evaluation.settings import AlpacaEvalConfig


@dataclass
class AlpacaEvalResult:
    annotations: list[dict[str, Any]]
    """One per judged instruction (see `annotator.score`)."""
    summary: dict[str, Any]
    """Leaderboard row (see `metrics.aggregate`) plus `usage` (requests, tokens, cost)."""
    model_outputs_path: Path | None


def judge_comparisons(
    comparisons: Sequence[Comparison], client: JudgeClient, config: AnnotatorConfig
) -> list[dict[str, Any]]:
    """Annotate every comparison: identical outputs are ties without a judge call.

    Raises `JudgeRequestsFailed` if any request failed (successes are cached first).
    """
    to_judge = [c for c in comparisons if annotation_needs_judge(c)]
    judgments = client.complete_many([judge_request(c, config) for c in to_judge], desc="alpaca")
    raise_for_failures(judgments, client)
    by_index = {c.index: j for c, j in zip(to_judge, judgments)}
    return [score(c, by_index.get(c.index), config) for c in comparisons]


def evaluate(
    outputs: Sequence[str] | Sequence[dict[str, Any]],
    generator: str,
    config: AlpacaEvalConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    client: JudgeClient | None = None,
) -> AlpacaEvalResult:
    """Judge a model's outputs against the reference and summarise.

    `outputs`: one string per reference instruction in reference order, or dicts with
    `instruction` and `output`. With `output_dir`, writes `model_outputs.json` (alpaca_eval's
    input format), `annotations.json`, `summary.json`, and the judge cache by default.
    """
    config = config or AlpacaEvalConfig()
    references = load_reference_outputs(config.reference_outputs)
    records = model_output_records(outputs, references, generator)
    if len(records) != len(references) and not config.allow_subset:
        raise ValueError(
            f"outputs cover {len(records)} of {len(references)} instructions; "
            "set allow_subset=True for a partial (non-comparable) run"
        )
    directory = Path(output_dir) if output_dir is not None else None
    outputs_path = None
    if directory is not None:
        outputs_path = write_model_outputs(directory / "model_outputs.json", records)

    judge_config = config.judge
    if judge_config.cache_path is None and directory is not None:
        judge_config = dataclasses.replace(
            judge_config, cache_path=str(directory / "judge_cache.jsonl")
        )
    owns_client = client is None
    client = client or JudgeClient(judge_config)
    try:
        comparisons = make_comparisons(records, references)
        annotations = judge_comparisons(comparisons, client, config.annotator)
    finally:
        if owns_client:
            client.close()

    summary = aggregate(annotations, config.length_control, judge_model=client.config.model)
    if len(references) != N_INSTRUCTIONS:
        summary["comparability"].append(f"reference set has {len(references)} instructions")
        summary["comparable_to_leaderboard"] = False
    summary["usage"] = client.usage_summary()
    if directory is not None:
        annotations_json = json.dumps(annotations, indent=2, ensure_ascii=False)
        (directory / "annotations.json").write_text(annotations_json)
        (directory / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return AlpacaEvalResult(annotations, summary, model_outputs_path=outputs_path)
