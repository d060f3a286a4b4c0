"""What the training loop needs from its runtime: rank, world size, device, reporting, checkpoints.

The loop is written against ``TrainContext``; ``LocalContext`` runs it in a plain process, and
``pipelines.train`` provides one backed by Ray Train. Cross-rank sums go through
``torch.distributed`` when a process group exists, so the loop never needs Ray.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from orpo.metrics_log import MetricsLog


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device
    checkpoint_dir: Path
    """Where this worker writes checkpoints before reporting them."""
    restore_dir: Path | None
    """The checkpoint to resume from: a restarted run's latest, or ``checkpoint.resume_from``."""
    restarted: bool
    """``restore_dir`` is this job's own latest checkpoint (a restart), not a new job's start."""

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        """Publish metrics (identical on every rank), optionally with a checkpoint directory."""


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over data-parallel ranks (a no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LocalContext:
    """Single-process context: metrics go to ``metrics.jsonl`` and a readable log line."""

    rank = 0
    world_size = 1
    restarted = False  # a local job restores only from checkpoint.resume_from

    def __init__(self, output_dir: str | Path, device: torch.device | str = "cpu", echo: bool = True,
                 restore_dir: Path | None = None):
        self.output_dir = Path(output_dir)
        self.restore_dir = restore_dir
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.device = torch.device(device)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.metrics_log = MetricsLog(self.metrics_path)
        self.history: list[dict[str, float]] = []
        self.checkpoints: list[Path] = []
        self.echo = echo
        self._start = time.time()

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        self.history.append(dict(metrics))
        self.metrics_log.append(metrics)
        if checkpoint is not None:
            self.checkpoints.append(Path(checkpoint))
        if self.echo:
            print(format_metrics(metrics, time.time() - self._start), flush=True)


_LOG_KEYS = ("loss", "nll", "log_odds_ratio", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected", "lr", "grad_norm", "tokens_per_s")


def format_metrics(metrics: dict[str, float], elapsed_s: float) -> str:
    """One human-readable line per report: step, the headline metrics, eval ones when present."""
    parts = [f"step {int(metrics.get('step', 0)):>5}", f"{elapsed_s:7.1f}s"]
    for key in _LOG_KEYS + tuple(k for k in metrics if k.startswith("eval/")):
        value = metrics.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            parts.append(f"{key}={value:.4g}")
    return "  ".join(parts)
