"""AlpacaEval 2.0 aggregation: win rate, its standard error, LC win rate, and comparability.

Win rate as alpaca_eval's `get_winrate` (AbsoluteScoringRule): with preferences p in [1, 2]
(2 = model wins, 1.5 = tie), win_rate = mean(p - 1) x 100 and standard_error = sem(p - 1) x 100
(sample std, ddof=1, over sqrt(n)). `discrete_win_rate` first rounds each p to 1, 1.5 or 2.
Annotations without a preference (unparseable verdicts, failed requests) are counted and listed,
never scored.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from evaluation.alpaca_eval.annotator import ANNOTATOR_NAME
from evaluation.alpaca_eval.data import N_INSTRUCTIONS
from evaluation.alpaca_eval.length_control import LengthControlConfig, length_controlled_winrate
from evaluation.settings import FIXTURE_JUDGE_MODEL as FIXTURE_MODEL_NAME
from evaluation.settings import ALPACA_EVAL_JUDGE_MODEL as OFFICIAL_JUDGE_MODEL


def win_rate_stats(preferences: Sequence[float]) -> dict[str, float]:
    """alpaca_eval's head-to-head description of valid preferences in [1, 2]."""
    prefs = np.array([1.5 if p == 0 else p for p in preferences], dtype=float)  # 0: legacy tie
    model_win = prefs - 1  # (N,) in [0, 1]
    n_total = len(model_win)
    discrete = np.where(prefs == 1.5, 0.5, np.where(prefs < 1.5, 0.0, 1.0))
    return {
        "win_rate": float(model_win.mean() * 100) if n_total else float("nan"),
        "standard_error": _sem(model_win) * 100,
        "discrete_win_rate": float(discrete.mean() * 100) if n_total else float("nan"),
        "n_wins": int((model_win > 0.5).sum()),
        "n_wins_base": int((model_win < 0.5).sum()),
        "n_draws": int((prefs == 1.5).sum()),
        "n_total": n_total,
    }


def _sem(values: np.ndarray) -> float:
    if len(values) < 2:
        return float("nan")
    return float(values.std(ddof=1) / np.sqrt(len(values)))


def aggregate(
    annotations: Sequence[dict[str, Any]],
    length_control: LengthControlConfig | None = None,
    judge_model: str | None = None,
) -> dict[str, Any]:
    """Leaderboard row for one model from its annotations (see `annotator.score`).

    Keys: win_rate, standard_error, discrete_win_rate, n_wins, n_wins_base, n_draws, n_total
    (scored), length_controlled_winrate, lc_standard_error, glm, glm_weights, glm_C,
    avg_length, n_annotations, n_unparseable, n_request_errors, unscored_indices,
    preference_sources, generator, annotator, judge_model, comparable_to_leaderboard,
    comparability (list of reasons it is not comparable; empty when it is).
    """
    scored = [a for a in annotations if a["preference"] is not None]
    statuses = Counter(a["parse_status"] for a in annotations)
    summary: dict[str, Any] = win_rate_stats([a["preference"] for a in scored])

    generators = {a["generator_2"] for a in annotations}
    baselines = {a["generator_1"] for a in annotations}
    lc = length_controlled_winrate(
        model_win_prob=[a["preference"] - 1 for a in scored],
        baseline_lengths=[len(a["output_1"]) for a in scored],
        model_lengths=[len(a["output_2"]) for a in scored],
        instruction_index=[a["index"] for a in scored],
        config=length_control,
        model_is_baseline=bool(generators) and generators == baselines,
    )
    summary.update(
        length_controlled_winrate=lc["length_controlled_winrate"],
        lc_standard_error=lc["lc_standard_error"],
        glm=lc["glm"],
        glm_weights=lc["glm_weights"],
        glm_C=lc["glm_C"],
        avg_length=float(np.mean([len(a["output_2"]) for a in annotations]))
        if annotations
        else float("nan"),
        n_annotations=len(annotations),
        n_unparseable=statuses["unparseable"],
        n_request_errors=statuses["request_error"],
        unscored_indices=[a["index"] for a in annotations if a["preference"] is None],
        preference_sources=dict(Counter(a["preference_source"] for a in scored)),
        generator=", ".join(sorted(generators)),
        annotator=ANNOTATOR_NAME,
        judge_model=judge_model,
    )
    notes = _comparability_notes(annotations, summary, judge_model, lc["lc_comparability_note"])
    summary["comparable_to_leaderboard"] = not notes
    summary["comparability"] = notes
    return summary


def _comparability_notes(annotations, summary, judge_model, lc_note) -> list[str]:
    notes = []
    response_models = {a.get("judge_model") for a in annotations} - {None}
    if FIXTURE_MODEL_NAME in response_models or judge_model == FIXTURE_MODEL_NAME:
        notes.append("FIXTURE judge: deterministic test double, not an evaluation")
    elif judge_model is not None and judge_model != OFFICIAL_JUDGE_MODEL:
        notes.append(f"judge is {judge_model}, not the official {OFFICIAL_JUDGE_MODEL}")
    if summary["n_annotations"] != N_INSTRUCTIONS:
        notes.append(f"{summary['n_annotations']} of the {N_INSTRUCTIONS} instructions")
    if summary["n_unparseable"] or summary["n_request_errors"]:
        notes.append(
            f"{summary['n_unparseable']} unparseable verdicts and "
            f"{summary['n_request_errors']} failed requests were not scored"
        )
    if summary["preference_sources"].get("discrete"):
        notes.append("some preferences are discrete (judge gave no logprobs), not weighted")
    if lc_note:
        notes.append(lc_note)
    return notes
