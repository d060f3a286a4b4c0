"""Small evaluation plots (matplotlib, Agg backend: files only, no display)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402

# FastChat's MT-Bench radar order.
MT_BENCH_CATEGORIES = (
    "writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"
)


def category_radar(
    scores_by_model: dict[str, dict[str, float | None]],
    path: str | os.PathLike,
    categories: tuple[str, ...] = MT_BENCH_CATEGORIES,
    max_score: float = 10.0,
    title: str = "MT-Bench score by category",
) -> Path:
    """One closed polygon per model over the categories (missing ones drawn at 0); writes a PNG."""
    angles = np.linspace(0, 2 * np.pi, len(categories), endpoint=False)  # (C,)
    closed_angles = np.r_[angles, angles[:1]]  # (C + 1,)
    figure, axes = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
    for model, scores in scores_by_model.items():
        values = [scores.get(c) or 0.0 for c in categories]
        axes.plot(closed_angles, values + values[:1], label=model, linewidth=1.5)
        axes.fill(closed_angles, values + values[:1], alpha=0.15)
    axes.set_xticks(angles)
    axes.set_xticklabels([c.upper() if c == "stem" else c.capitalize() for c in categories])
    axes.set_ylim(0, max_score)
    axes.set_title(title)
    axes.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path
