"""The optimiser side of training behind one small interface: backward, step, checkpoints.

``TorchEngine`` is plain PyTorch AdamW for the single-process trainer; ``pipelines`` adds a
DeepSpeed ZeRO engine with the same methods. The loop only talks to ``Engine``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import get_scheduler

from orpo.trainer_config import OptimConfig


class Engine(Protocol):
    module: torch.nn.Module
    """The model to run forwards on."""

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of ``loss`` (already normalised for accumulation and ranks)."""

    def step(self) -> float:
        """Clip, update, advance the schedule, zero the gradients; return the pre-clip grad norm."""

    def lr(self) -> float:
        """The learning rate the next update will use."""

    def save_checkpoint(self, directory: Path, client_state: dict[str, Any]) -> None:
        """Write model, optimiser, scheduler and ``client_state`` (every rank calls this)."""

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        """Restore what ``save_checkpoint`` wrote; return its ``client_state``."""


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """transformers' schedules: linear, cosine, inverse_sqrt and constant, each with warmup."""
    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)


def rng_state() -> dict[str, Any]:
    """Python and torch RNG states, for bit-identical resumes."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state: Any) -> tuple:
    # Serialisers may hand tuples back as lists; random.setstate insists on tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class TorchEngine:
    """AdamW + schedule + clipping for one process."""

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, total_steps: int):
        self.module = model
        self.cfg = cfg
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        params = [p for p in self.module.parameters() if p.requires_grad]
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save_checkpoint(self, directory: Path, client_state: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach() for n, p in self.module.named_parameters() if p.requires_grad}
        torch.save({"model": trainable, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "client_state": client_state},
                   directory / "engine.pt")

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        state = torch.load(directory / "engine.pt", map_location="cpu", weights_only=True)
        missing = set(n for n, p in self.module.named_parameters() if p.requires_grad) - set(state["model"])
        if missing:
            raise ValueError(f"checkpoint {directory} lacks parameters: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, param in self.module.named_parameters():
                if name in state["model"]:
                    param.copy_(state["model"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["client_state"]
