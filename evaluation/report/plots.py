"""The report's plots: matplotlib (Agg) figures returned as PNG bytes.

Each function takes plain numbers (already read from the run directory) and returns the PNG,
or None when there is nothing to draw; the report writes the bytes under ``plots/`` and embeds
them in the HTML.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from evaluation.plots import MT_BENCH_CATEGORIES, category_radar

Series = tuple[list[float], list[float]]
COLORS = plt.get_cmap("tab10").colors
DPI = 100
F = TypeVar("F", bound=Callable[..., "bytes | None"])
log = logging.getLogger(__name__)


def _never_raises(plot: F) -> F:
    """A plot that cannot be drawn (odd values in a run) is left out, never fails the report;
    the tables beside it still carry the numbers."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        try:
            return plot(*args, **kwargs)
        except Exception:
            log.warning("report plot %s failed; left out", plot.__name__, exc_info=True)
            plt.close("all")
            return None

    return wrapper  # type: ignore[return-value]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


@_never_raises
def training_curves(
    curves: dict[str, dict[str, dict[str, Series]]],
    panels: Sequence[tuple[str, str]],
) -> bytes | None:
    """One panel per metric, one colour per method; train solid, eval dashed with markers.

    ``curves[method][metric] = {"train": (steps, values), "eval": (steps, values)}``;
    ``panels`` lists (metric, panel title).
    """
    if not any(
        s[0]
        for per_metric in curves.values()
        for kinds in per_metric.values()
        for s in kinds.values()
    ):
        return None
    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for index, (metric, title) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        drawn = False
        for color, (method, per_metric) in zip(_cycle(), curves.items()):
            kinds = per_metric.get(metric, {})
            train, evaluation = kinds.get("train", ([], [])), kinds.get("eval", ([], []))
            if train[0]:
                ax.plot(train[0], train[1], color=color, linewidth=1.5, label=f"{method} (train)")
                drawn = True
            if evaluation[0]:
                ax.plot(
                    evaluation[0],
                    evaluation[1],
                    color=color,
                    linestyle="--",
                    marker="o",
                    markersize=3.5,
                    linewidth=1.2,
                    label=f"{method} (eval)",
                )
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7.5)
        else:
            ax.text(
                0.5,
                0.5,
                "not logged by any method",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="gray",
            )
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle("Training curves (solid: training batches, dashed: held-out eval)", fontsize=13)
    figure.tight_layout()
    return _png(figure)


@_never_raises
def logp_panels(per_method: dict[str, dict[str, Any]], start_label: str | None = None) -> bytes | None:
    """The ORPO paper's Figure 3 vs Figure 7 view: per method, chosen and rejected log-probs.

    ``per_method[label] = {"chosen": (steps, values), "rejected": (...), "source": "eval"|"train",
    "summed": bool}``. Panels of mean per-token log-probs share one y-range so the methods compare
    at a glance; summed log-probs (DPO) live on another scale and get their own. ``start_label``
    (e.g. "base") marks step 0, the model every method started from.
    """
    per_method = {k: v for k, v in per_method.items() if v["chosen"][0] or v["rejected"][0]}
    if not per_method:
        return None
    count = len(per_method)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.7 * rows), squeeze=False)
    mean_values = [
        v
        for d in per_method.values()
        if not d.get("summed")
        for v in d["chosen"][1] + d["rejected"][1]
    ]
    shared = None
    if mean_values:
        low, high = min(mean_values), max(mean_values)
        pad = 0.05 * (high - low) or 0.05
        shared = (low - pad, high + pad)
    for index, (label, data) in enumerate(per_method.items()):
        ax = axes[index // columns][index % columns]
        marker = "o" if data["source"] == "eval" else None
        ax.plot(*data["chosen"], color="#1a7f37", marker=marker, markersize=3.5, label="chosen")
        ax.plot(*data["rejected"], color="#cf222e", marker=marker, markersize=3.5, label="rejected")
        where = "held-out eval" if data["source"] == "eval" else "training batches"
        if start_label and 0 in data["chosen"][0]:
            ax.axvline(0, color="grey", linestyle=":", linewidth=1)
            ax.annotate(start_label, (0, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color="grey")
        if data.get("summed"):
            ax.set_title(f"{label}\n({where}; summed: own y-axis)", fontsize=11)
            ax.set_ylabel("summed log-prob per response")
        else:
            ax.set_title(f"{label}\n({where})", fontsize=11)
            ax.set_ylabel("mean log-prob per response token")
            ax.set_ylim(*shared)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for index in range(count, rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle("Log-probabilities of chosen vs rejected responses", fontsize=13)
    figure.tight_layout()
    return _png(figure)


@_never_raises
def sweep_plot(
    values: list[Any],
    objectives: list[float],
    best_index: int | None,
    parameter: str,
    objective: str,
    mode: str | None,
    title: str,
) -> bytes | None:
    """The objective against one hyperparameter; the best trial drawn as a gold star."""
    if not values:
        return None
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    figure, ax = plt.subplots(figsize=(6.4, 4.0))
    if numeric:
        xs = [float(v) for v in values]
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ax.plot(
            [xs[i] for i in order],
            [objectives[i] for i in order],
            color=COLORS[0],
            marker="o",
            linewidth=1.2,
            label="trial",
        )
        positive = [x for x in xs if x > 0]
        if len(positive) == len(xs) and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
    else:
        categories = sorted({str(v) for v in values})
        xs = [categories.index(str(v)) for v in values]
        ax.scatter(xs, objectives, color=COLORS[0], label="trial")
        ax.set_xticks(range(len(categories)), categories)
    if best_index is not None:
        ax.scatter(
            [xs[best_index]],
            [objectives[best_index]],
            marker="*",
            s=260,
            color="#d4a72c",
            edgecolor="black",
            zorder=5,
            label="best",
        )
    ax.set_xlabel(parameter)
    ax.set_ylabel(objective + (f" ({mode})" if mode else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


@_never_raises
def mt_bench_radar(scores_by_model: dict[str, dict[str, float | None]]) -> bytes | None:
    """MT-Bench by category via ``evaluation.plots.category_radar`` (which writes a file)."""
    scored = {m: s for m, s in scores_by_model.items() if any(v is not None for v in s.values())}
    if not scored:
        return None
    present = {c for s in scored.values() for c, v in s.items() if v is not None}
    categories = tuple(c for c in MT_BENCH_CATEGORIES if c in present) + tuple(
        sorted(present - set(MT_BENCH_CATEGORIES))
    )
    if len(categories) < 3:
        return None  # a polygon needs three axes; the table carries the numbers
    with tempfile.TemporaryDirectory() as tmp:
        path = category_radar(scored, Path(tmp) / "radar.png", categories=categories)
        return path.read_bytes()


@_never_raises
def compute_bars(
    labels: list[str], policy_flops: list[float], reference_flops: list[float]
) -> bytes | None:
    """Estimated FLOPs per method, split into the policy's and the reference model's share."""
    if not labels:
        return None
    figure, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(labels) + 2.5), 3.8))
    positions = range(len(labels))
    ax.bar(positions, policy_flops, color=COLORS[0], label="policy forward + backward")
    ax.bar(
        positions,
        reference_flops,
        bottom=policy_flops,
        color=COLORS[3],
        label="reference-model forward (DPO only)",
    )
    ax.set_xticks(list(positions), labels, rotation=15 if len(labels) > 4 else 0)
    ax.set_ylabel("estimated FLOPs")
    ax.set_title("Training compute per method (run_info.json estimates)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _cycle():
    while True:
        yield from COLORS
