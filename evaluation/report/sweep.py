"""A sweep's trials as a table and one objective-vs-parameter plot per varying hyperparameter."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from evaluation.report import plots
from evaluation.report.load import MethodData, finite
from evaluation.report.render import Block, Image, Para, Table
from evaluation.report.tables import DASH, num, param


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


# What λ did to the model, whatever the objective: the held-out log-prob margin (chosen − rejected),
# comparable across λ and β (see pipelines.config.OBJECTIVE_MODES).
MARGIN = "eval/logps/margin"


@dataclass
class Trial:
    trial_id: str
    config: dict[str, Any]
    objective: float | None
    status: str
    margin: float | None = None


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"loss": {"lam": 0.1}} -> {"loss.lam": 0.1}; dotted keys pass through."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def _objective_name(method: MethodData) -> tuple[str | None, str | None, bool]:
    """(metric, mode, from best.json?)."""
    best = method.sweep_best or {}
    if best.get("metric"):
        return str(best["metric"]), best.get("mode"), True
    keys: dict[str, None] = {}
    for trial in method.sweep_results or []:
        for key in (trial.get("metrics") or {}) if isinstance(trial, dict) else {}:
            keys[key] = None
    metric = "eval/loss" if "eval/loss" in keys else next(iter(keys), None)
    return metric, None, False


def trials(method: MethodData, metric: str | None) -> list[Trial]:
    out = []
    for i, raw in enumerate(method.sweep_results or []):
        if not isinstance(raw, dict):
            continue
        metrics = raw.get("metrics") or {}
        out.append(
            Trial(
                trial_id=str(raw.get("trial_id", i)),
                config=flatten(raw.get("config") or {}),
                objective=finite(metrics.get(metric)) if metric else None,
                status=str(raw.get("status", DASH)),
                margin=finite(metrics.get(MARGIN)),
            )
        )
    return out


def varying(all_trials: list[Trial]) -> tuple[list[str], dict[str, Any]]:
    """(parameters that differ between trials, parameters held fixed with their value)."""
    keys: dict[str, None] = {}
    for t in all_trials:
        keys.update(dict.fromkeys(t.config))
    changing, fixed = [], {}
    for key in keys:
        values = {repr(t.config.get(key)) for t in all_trials}
        if len(values) > 1:
            changing.append(key)
        else:
            fixed[key] = all_trials[0].config.get(key) if all_trials else None
    return changing, fixed


def best_index(
    all_trials: list[Trial], method: MethodData, keys: list[str], mode: str | None
) -> int | None:
    """The trial best.json names (by trial_id, else by the varying parameters), else the best by mode."""
    best_id = (method.sweep_best or {}).get("trial_id")
    by_id = [
        i for i, t in enumerate(all_trials) if best_id is not None and t.trial_id == str(best_id)
    ]
    if len(by_id) == 1:
        return by_id[0]
    best_config = flatten((method.sweep_best or {}).get("config") or {})
    if best_config and keys:
        matches = [
            i
            for i, t in enumerate(all_trials)
            if all(k not in best_config or t.config.get(k) == best_config[k] for k in keys)
        ]
        if len(matches) == 1:
            return matches[0]
    scored = [(t.objective, i) for i, t in enumerate(all_trials) if t.objective is not None]
    if not scored or mode not in ("min", "max"):
        return None
    return (min(scored) if mode == "min" else max(scored))[1]


def section(method: MethodData) -> list[Block]:
    """Table, fixed parameters and plot(s) of one method's sweep."""
    metric, mode, from_best = _objective_name(method)
    all_trials = trials(method, metric)
    blocks: list[Block] = []
    if not all_trials:
        best = method.sweep_best or {}
        blocks.append(
            Para(
                f"results.json is missing; best.json reports {best.get('metric')} = "
                f"{num(best.get('value'))} ({best.get('mode')}) for config "
                f"`{flatten(best.get('config') or {})}`.",
                "note",
            )
        )
        return blocks
    keys, fixed = varying(all_trials)
    best = best_index(all_trials, method, keys, mode)
    objective_header = f"{metric} ({mode})" if mode else str(metric)
    show_margin = metric != MARGIN and any(t.margin is not None for t in all_trials)
    rows = [
        [
            t.trial_id,
            *(param(t.config.get(k, DASH)) for k in keys),
            num(t.objective),
            *([num(t.margin)] if show_margin else []),
            t.status,
        ]
        for t in all_trials
    ]
    if best is not None:
        rows[best][0] = "★ " + rows[best][0]
    blocks.append(
        Table(
            ["trial", *keys, objective_header, *([f"{MARGIN} (held-out)"] if show_margin else []), "status"],
            rows,
            highlight={best} if best is not None else set(),
            caption="★ best trial"
            + ("" if from_best else " (no best.json: objective and best chosen by the report)"),
        )
    )
    if (
        best is not None
        and method.sweep_best
        and finite(method.sweep_best.get("value")) is not None
    ):
        blocks.append(
            Para(
                f"best.json: {metric} = {num(method.sweep_best.get('value'))} "
                f"(mode {mode}); exported to `{method.sweep_best.get('export_dir', DASH)}`.",
                "note",
            )
        )
    if fixed:
        blocks.append(
            Para("Held fixed: " + ", ".join(f"`{k}={param(v)}`" for k, v in fixed.items()), "note")
        )
    scored = [(i, t) for i, t in enumerate(all_trials) if t.objective is not None]
    unscored = len(all_trials) - len(scored)
    for key in keys:
        points = [(t.config.get(key), t.objective, i) for i, t in scored if key in t.config]
        if not points:
            continue
        best_point = next((j for j, (_, _, i) in enumerate(points) if i == best), None)
        other = " Other parameters vary too: each point is one trial." if len(keys) > 1 else ""
        png = plots.sweep_plot(
            [p[0] for p in points],
            [p[1] for p in points],
            best_point,
            key,
            str(metric),
            mode,
            f"{method.label}: {metric} vs {key}",
        )
        if png:
            blocks.append(
                Image(
                    f"{slug(f'sweep_{method.label}_{key}')}.png",
                    png,
                    f"{method.label} sweep: {metric} vs {key}",
                    f"{metric} against {key}; gold star: best trial.{other}",
                )
            )
        margins = [(t.config.get(key), t.margin, i) for i, t in enumerate(all_trials)
                   if show_margin and key in t.config and t.margin is not None]
        png = plots.sweep_plot(
            [p[0] for p in margins],
            [p[1] for p in margins],
            next((j for j, (_, _, i) in enumerate(margins) if i == best), None),
            key,
            f"{MARGIN} (held-out)",
            None,
            f"{method.label}: what {key} did (log-prob margin chosen − rejected)",
        ) if margins else None
        if png:
            blocks.append(
                Image(
                    f"{slug(f'sweep_{method.label}_{key}_margin')}.png",
                    png,
                    f"{method.label} sweep: held-out log-prob margin vs {key}",
                    f"Held-out mean log-prob margin (chosen − rejected) at the end of each trial "
                    f"against {key}, next to the objective above; gold star: the trial the objective picked.{other}",
                )
            )
    if unscored:
        blocks.append(
            Para(f"{unscored} trial(s) reported no {metric} and are not plotted.", "note")
        )
    return blocks
