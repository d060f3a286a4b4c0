"""DeepSpeed ZeRO behind ``orpo.engine.Engine``: the DeepSpeed JSON derived from our config.

Normalisation stays ours: ``orpo.objective`` already divides every loss by the global batch
and multiplies by the data-parallel size, so backward runs with ``scale_wrt_gas=False`` and
DeepSpeed's gradient averaging over ranks completes the global mean.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import torch

from orpo.engine import build_scheduler
from pipelines.config import Config

CHECKPOINT_TAG = "state"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def use_bf16(cfg: Config) -> bool:
    return cfg.deepspeed.bf16 == "on" or (cfg.deepspeed.bf16 == "auto" and cfg.scaling.use_gpu)


def deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON: micro × accumulation × workers = the configured global batch."""
    ds, optim = cfg.deepspeed, cfg.optim
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=ds.overlap_comm, contiguous_gradients=True)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": cfg.loop.micro_batch_size,
        "gradient_accumulation_steps": cfg.loop.accumulation_steps(world_size),
        "train_batch_size": cfg.loop.global_batch_size,
        "gradient_clipping": cfg.optim.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(cfg)},
        "optimizer": {"type": "AdamW", "params": {
            "lr": optim.lr, "betas": list(optim.adam_betas), "eps": optim.adam_eps,
            "weight_decay": optim.weight_decay, "torch_adam": ds.torch_adam}},
        # torch's AdamW with offload: no C++ build of DeepSpeed's CPU Adam.
        "zero_force_ds_cpu_optimizer": not ds.torch_adam,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    return _merge(config, ds.extra)


def disable_cpu_shm_comm() -> None:
    """Skip DeepSpeed's shared-memory allreduce op on CPU: it compiles C++ (~17 s) at every start.

    ``deepspeed.comm.torch`` is shadowed by the ``torch`` name inside ``deepspeed.comm``, so
    reach the module through importlib.
    """
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


class DeepSpeedEngine:
    """``orpo.engine.Engine`` over a ``deepspeed.DeepSpeedEngine``."""

    def __init__(self, model: torch.nn.Module, cfg: Config, ds_config: dict[str, Any],
                 total_steps: int):
        import deepspeed

        self.ds, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=ds_config,
            lr_scheduler=lambda optimizer: build_scheduler(optimizer, cfg.optim, total_steps),
        )
        self.module = self.ds
        self.zero_stage = ds_config["zero_optimization"]["stage"]

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)
        if not self.ds.is_gradient_accumulation_boundary():
            self.ds.step()  # only advances DeepSpeed's micro-step count

    def step(self) -> float:
        pre_clip_norm = self._replicated_grad_norm() if self.zero_stage == 0 else None
        self.ds.step()  # at the accumulation boundary: clip, update, schedule, zero grads
        if pre_clip_norm is not None:
            return pre_clip_norm
        norm = self.ds.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def _replicated_grad_norm(self) -> float:
        """ZeRO-0's pre-clip grad norm (DeepSpeed records none at stage 0).

        At the accumulation boundary the backward has already all-reduced the gradients, so every
        rank holds the full averaged gradient: its norm is the global one, as ``TorchEngine``'s.
        """
        grads = [p.grad for p in self.ds.module.parameters() if p.requires_grad and p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save_checkpoint(self, directory: Path, client_state: dict[str, Any]) -> None:
        self.ds.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, client_state=client_state)

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        path, client_state = self.ds.load_checkpoint(str(directory), tag=CHECKPOINT_TAG)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint '{CHECKPOINT_TAG}' under {directory}")
        return client_state

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (a collective under ZeRO-3; call on every rank)."""
        if self.zero_stage == 3:
            return self.ds._zero3_consolidated_16bit_state_dict()
        if self.ds.global_rank == 0:
            return {k: v.detach().cpu() for k, v in self.ds.module.state_dict().items()}
        return None


def inference_engine(model: torch.nn.Module, ds_config: dict[str, Any]) -> torch.nn.Module:
    """A frozen model (DPO's reference) under ZeRO-3: partitioned like the policy, gathered on use.

    Loaded inside the ZeRO-3 init context its weights are already partitioned; only an engine
    gathers them for a forward. No optimizer, no gradients (as TRL prepares its reference).
    """
    import deepspeed

    config = {key: ds_config[key] for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                              "train_batch_size", "bf16") if key in ds_config}
    zero = ds_config["zero_optimization"]
    config["zero_optimization"] = {"stage": 3, **({"offload_param": zero["offload_param"]}
                                                  if "offload_param" in zero else {})}
    engine, *_ = deepspeed.initialize(model=model.requires_grad_(False), config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None, unlike nn.Module.eval()
    return engine
