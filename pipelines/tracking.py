"""Optional experiment trackers (TensorBoard, MLflow, W&B), configured, not hard-wired."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

Logger = Callable[[dict[str, Any]], None]


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}


def make_trackers(tracking: dict[str, Any], output_dir: Path) -> list[Logger]:
    """One logging function per enabled tracker; each takes a metrics row with a ``step``."""
    loggers: list[Logger] = []
    if tracking.get("tensorboard"):
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))

        def log_tensorboard(row: dict[str, Any]) -> None:
            for key, value in _numeric(row).items():
                writer.add_scalar(key, value, int(row.get("step", 0)))
            writer.flush()

        loggers.append(log_tensorboard)
    if tracking.get("mlflow_tracking_uri"):
        import mlflow

        mlflow.set_tracking_uri(tracking["mlflow_tracking_uri"])
        mlflow.start_run(run_name=output_dir.name)
        loggers.append(lambda row: mlflow.log_metrics(
            {k.replace("/", "_"): v for k, v in _numeric(row).items()}, step=int(row.get("step", 0))))
    if tracking.get("wandb_project"):
        import wandb

        run = wandb.init(project=tracking["wandb_project"], name=output_dir.name)
        loggers.append(lambda row: run.log(_numeric(row), step=int(row.get("step", 0))))
    return loggers
