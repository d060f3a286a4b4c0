"""Headline figures per method and the ORPO-vs-SFT effect check, as written to ``summary.json``.

Every number is copied from a stage output (metrics.jsonl eval rows, run_info.json, the eval
summaries); nothing is estimated here. What is missing stays ``None`` with the reason beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluation.report.load import MethodData, RunData, finite, load_run

IFEVAL_METRICS = (
    "prompt_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_strict_acc",
    "inst_level_loose_acc",
)
ALPACA_METRICS = (
    "win_rate",
    "standard_error",
    "length_controlled_winrate",
    "lc_standard_error",
    "n_total",
)
MT_BENCH_METRICS = ("turn_1", "turn_2", "overall")
COMPUTE_KEYS = (
    "wall_s",
    "num_workers",
    "worker_hours",
    "tokens_processed",
    "n_params",
    "forward_passes_per_pair",
    "flops_estimate",
    "reference_flops",
)
FINAL_TRAIN_KEYS = (
    "loss",
    "nll",
    "log_odds_ratio",
    "rewards/margins",
    "rewards/accuracies",
    "eval/loss",
    "eval/rewards/accuracies",
)


def series(rows: list[dict[str, Any]] | None, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that report ``key`` as a finite number."""
    steps, values = [], []
    for row in rows or []:
        value, step = finite(row.get(key)), finite(row.get("step"))
        if value is not None and step is not None:
            steps.append(step)
            values.append(value)
    return steps, values


def logp_unit(method: MethodData) -> str:
    """DPO logs summed log-probs; ORPO, SimPO and SFT mean per-token ones.

    As ``orpo.losses.LossType.length_normalized_logps``, without importing torch here.
    """
    return (
        "summed log-prob per response"
        if method.loss_type == "dpo"
        else "mean log-prob per response token"
    )


def eval_logps(method: MethodData) -> dict[str, Any] | None:
    """First and last held-out mean log-probs (``eval/logps/*``), or None without eval rows."""
    # Only rows that carry both, so initial and final refer to the same eval of the same pairs.
    rows = [
        r
        for r in method.metrics or []
        if finite(r.get("eval/logps/chosen")) is not None
        and finite(r.get("eval/logps/rejected")) is not None
    ]
    steps, chosen = series(rows, "eval/logps/chosen")
    _, rejected = series(rows, "eval/logps/rejected")
    if not chosen:
        return None
    return {
        "source": "eval rows of train/<method>/metrics.jsonl (held-out pairs)",
        "unit": logp_unit(method),
        "initial_step": _as_int(steps[0]),
        "final_step": _as_int(steps[-1]),
        "chosen_initial": chosen[0],
        "chosen_final": chosen[-1],
        "rejected_initial": rejected[0],
        "rejected_final": rejected[-1],
        "chosen_change": chosen[-1] - chosen[0],
        "rejected_change": rejected[-1] - rejected[0],
        "n_eval_points": len(chosen),
    }


def _as_int(step: float) -> int | float:
    return int(step) if step == int(step) else step


def _pick(block: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if not isinstance(block, dict):
        return None
    picked = {k: block[k] for k in keys if k in block}
    return picked or None


REWARD_KEYS = ("reward", "benchmark", "n", "mean_reward")
DIVERSITY_KEYS = ("pid", "aid", "n_prompts", "n_pairs", "benchmark", "num_samples", "temperature",
                  "embedding_model", "direction")
BASE_KEYS = ("heldout_perplexity", "heldout_nll", "step", "initial_heldout_perplexity", "initial_step",
             "perplexity_of", "corpus", "train_conversations", "heldout_conversations", "export_dir")
# Methods started from one model, evaluated on the same held-out pairs, log the same step-0 log-probs.
START_TOLERANCE = 1e-3


def method_headline(method: MethodData) -> dict[str, Any]:
    """The figures a reader wants first for one method."""
    evaluation = method.eval_summary or {}
    final_train = {}
    for key in FINAL_TRAIN_KEYS:
        _, values = series(method.metrics, key)
        if values:
            final_train[key] = values[-1]
    alpaca = _pick(evaluation.get("alpaca_eval"), ALPACA_METRICS + ("comparable_to_leaderboard",))
    mt_bench = _pick(evaluation.get("mt_bench"), MT_BENCH_METRICS + ("comparable_to_leaderboard",))
    return {
        "loss_type": method.loss_type,
        "logps": eval_logps(method),
        "ifeval": _pick(evaluation.get("ifeval"), IFEVAL_METRICS),
        "alpaca_eval": alpaca,
        "mt_bench": mt_bench,
        "reward": _pick(evaluation.get("reward"), REWARD_KEYS),
        "reward_winrate": None,
        "diversity": _pick(evaluation.get("diversity"), DIVERSITY_KEYS),
        "final_train_metrics": final_train or None,
        "compute": _pick(method.run_info, COMPUTE_KEYS),
        "sweep_best": _pick(method.sweep_best, ("metric", "mode", "value", "config")),
        "missing": dict(method.missing),
    }


def find_method(run: RunData, kind: str) -> MethodData | None:
    """The run's ORPO (or SFT) method: the directory named so, else the one unique loss type."""
    if kind in run.methods:
        return run.methods[kind]
    matches = [m for m in run.methods.values() if m.loss_type == kind]
    return matches[0] if len(matches) == 1 else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def effect(run: RunData, headlines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Does the run show the ORPO paper's effect (its Figure 3 vs Figure 7, and Table 6)?

    Two checks, each True, False or None (cannot be judged, with the reason):
    the mean held-out rejected log-prob falls under ORPO and rises under SFT; and ORPO's
    IFEval prompt-level strict accuracy is at least SFT's. ``verdict`` is True only when both hold.
    """
    changes = {
        name: (h["logps"] or {}).get("rejected_change") if h["logps"] else None
        for name, h in headlines.items()
    }
    orpo, sft = find_method(run, "orpo"), find_method(run, "sft")
    checks: list[dict[str, Any]] = []

    statement = "rejected log-prob falls under ORPO and rises under SFT"
    if orpo is None or sft is None:
        missing = " and ".join(k.upper() for k, m in (("orpo", orpo), ("sft", sft)) if m is None)
        checks.append(
            {"check": statement, "verdict": None, "detail": f"cannot be judged: no {missing} run"}
        )
    else:
        orpo_change, sft_change = changes.get(orpo.method), changes.get(sft.method)
        if orpo_change is None or sft_change is None:
            checks.append(
                {
                    "check": statement,
                    "verdict": None,
                    "detail": "cannot be judged: no eval/logps rows for "
                    + " and ".join(
                        m.method for m, c in ((orpo, orpo_change), (sft, sft_change)) if c is None
                    ),
                }
            )
        else:
            checks.append(
                {
                    "check": statement,
                    "verdict": orpo_change < 0 < sft_change,
                    "detail": f"change in mean rejected log-prob (final - initial): "
                    f"ORPO {_fmt(orpo_change)}, SFT {_fmt(sft_change)}",
                }
            )

    statement = "ORPO's constraint-following ≥ SFT's (IFEval prompt-level strict accuracy)"
    if orpo is None or sft is None:
        checks.append(
            {
                "check": statement,
                "verdict": None,
                "detail": "cannot be judged: ORPO or SFT run missing",
            }
        )
    else:
        orpo_acc = finite((headlines[orpo.method]["ifeval"] or {}).get("prompt_level_strict_acc"))
        sft_acc = finite((headlines[sft.method]["ifeval"] or {}).get("prompt_level_strict_acc"))
        if orpo_acc is None or sft_acc is None:
            checks.append(
                {
                    "check": statement,
                    "verdict": None,
                    "detail": "cannot be judged: IFEval missing for "
                    + " and ".join(
                        m.method for m, a in ((orpo, orpo_acc), (sft, sft_acc)) if a is None
                    ),
                }
            )
        else:
            checks.append(
                {
                    "check": statement,
                    "verdict": orpo_acc >= sft_acc,
                    "detail": f"IFEval prompt-level strict: ORPO {orpo_acc:.4f}, SFT {sft_acc:.4f}",
                }
            )

    verdicts = [c["verdict"] for c in checks]
    verdict = False if False in verdicts else (None if None in verdicts else True)
    if verdict is True:
        text = "Reproduced: " + "; ".join(c["check"] for c in checks) + "."
    elif verdict is False:
        failed = [c["check"] for c in checks if c["verdict"] is False]
        text = "NOT reproduced: it is not true that " + "; nor that ".join(failed) + "."
    else:
        text = (
            "Cannot be judged from this run: "
            + "; ".join(
                c["detail"].removeprefix("cannot be judged: ")
                for c in checks
                if c["verdict"] is None
            )
            + "."
        )
    return {
        "rejected_logp_change": changes,
        "orpo_method": orpo.method if orpo else None,
        "sft_method": sft.method if sft else None,
        "checks": checks,
        "verdict": verdict,
        "verdict_text": text,
    }


def shared_start(run: RunData, headlines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Do the methods start from one model? Their step-0 held-out log-probs must agree.

    With a base stage that model is the base; without one, the random-init model.
    """
    starts = {
        name: (h["logps"]["chosen_initial"], h["logps"]["rejected_initial"])
        for name, h in headlines.items()
        if h["logps"] and h["logps"]["initial_step"] == 0 and h["loss_type"] != "dpo"
    }
    model = "the pretrained base" if run.base else "the same random-init model (no base stage)"
    if len(starts) < 2:
        return {"from": model, "agree": None, "detail": "fewer than two methods with a step-0 eval row"}
    values = list(starts.values())
    spread = max(max(abs(v[i] - values[0][i]) for v in values) for i in (0, 1))
    return {
        "from": model,
        "agree": spread <= START_TOLERANCE,
        "max_difference": spread,
        "detail": "step-0 held-out log-probs (chosen, rejected): "
        + ", ".join(f"{n} ({c:.4f}, {r:.4f})" for n, (c, r) in starts.items()),
    }


def run_summary(run: RunData) -> dict[str, Any]:
    headlines = {name: method_headline(m) for name, m in run.methods.items()}
    winrate = run.winrate or {}
    for name, result in (winrate.get("methods") or {}).items():
        if name in headlines and isinstance(result, dict):
            headlines[name]["reward_winrate"] = {
                "baseline": winrate.get("baseline"),
                "reward": winrate.get("reward"),
                **(_pick(result, ("win_rate", "stderr", "n", "wins", "ties", "losses")) or {}),
            }
    base = _pick(run.base, BASE_KEYS)
    return {
        "run": run.name,
        "run_dir": str(run.path),
        "base": base,
        "methods": headlines,
        "start": shared_start(run, headlines),
        "effect": effect(run, headlines),
        "data": run.data_stats,
        "problems": list(run.problems),
    }


def write_summary(run_dir: str | Path) -> dict[str, Any]:
    """Compute a run's headline figures and write them to ``<run_dir>/summary.json``."""
    run_dir = Path(run_dir)
    summary = run_summary(load_run(run_dir))
    write_json(run_dir / "summary.json", summary)
    return summary


def write_json(path: Path, data: Any) -> None:
    # Non-finite floats become null: summary.json stays valid JSON for every reader.
    path.write_text(json.dumps(_finite_or_null(data), indent=2, default=str) + "\n")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if finite(value) is not None else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value
