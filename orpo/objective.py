"""From a collated batch to the per-pair losses of the configured objective.

Normalisation, stated once: every pair's loss is divided by the number of pairs in the
*global* batch (all accumulation steps × all ranks), so any micro-batch × accumulation ×
worker split of the same pairs gives the same loss and gradients. Inside a pair's loss:
- the odds-ratio / SimPO / DPO terms are per sequence (one term per pair);
- the chosen NLL is per token of the global batch (``token``: Σ token NLL / Σ NLL tokens, as
  TRL computes it) or per sequence (``sequence``: each sequence's mean token NLL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from orpo.logps import PairLogps, concatenated_forward
from orpo.losses import LossType, Metrics, dpo_loss, orpo_loss, sft_loss, simpo_loss
from orpo.packing import is_packed, packed_counts
from orpo.trainer_config import LossConfig


@dataclass
class GlobalCounts:
    """Denominators of the global batch (summed over accumulation steps and ranks)."""

    pairs: float
    nll_tokens: float


class ReferenceLogps(Protocol):
    """Summed response log-probs of the reference policy for a batch: (chosen, rejected), (B,)."""

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...


def chosen_nll_term(logps: PairLogps, cfg: LossConfig, counts: GlobalCounts) -> torch.Tensor:
    """Per-pair NLL such that its mean over the global batch is the configured normalisation."""
    if cfg.nll_normalization == "token":
        return logps.chosen_nll.sum * (counts.pairs / counts.nll_tokens)
    return logps.chosen_nll.mean


def _orpo(lp: PairLogps, nll: torch.Tensor, cfg: LossConfig, ref) -> tuple[torch.Tensor, Metrics]:
    return orpo_loss(lp.chosen.mean, lp.rejected.mean, nll, cfg.lam)


def _simpo(lp: PairLogps, nll: torch.Tensor, cfg: LossConfig, ref) -> tuple[torch.Tensor, Metrics]:
    return simpo_loss(lp.chosen.mean, lp.rejected.mean, cfg.beta_value(), cfg.gamma_beta_ratio, cfg.label_smoothing)


def _dpo(lp: PairLogps, nll: torch.Tensor, cfg: LossConfig, ref) -> tuple[torch.Tensor, Metrics]:
    ref_chosen, ref_rejected = ref
    return dpo_loss(lp.chosen.sum, lp.rejected.sum, ref_chosen, ref_rejected, cfg.beta_value(), cfg.label_smoothing)


def _sft(lp: PairLogps, nll: torch.Tensor, cfg: LossConfig, ref) -> tuple[torch.Tensor, Metrics]:
    return sft_loss(nll, lp.chosen.mean, lp.rejected.mean)


OBJECTIVES: dict[LossType, Callable[..., tuple[torch.Tensor, Metrics]]] = {
    LossType.ORPO: _orpo,
    LossType.SIMPO: _simpo,
    LossType.DPO: _dpo,
    LossType.SFT: _sft,
}


def batch_counts(batch: dict[str, torch.Tensor], cfg: LossConfig) -> torch.Tensor:
    """This micro-batch's (pairs, NLL tokens), to be summed into ``GlobalCounts``."""
    if is_packed(batch):
        n_pairs, nll_tokens = packed_counts(batch, cfg.nll_span)
        return torch.tensor([float(n_pairs), float(nll_tokens)], dtype=torch.float64)
    n_pairs = batch["input_ids"].shape[0] // 2
    if cfg.nll_span == "response":
        nll_tokens = (batch["labels"][:n_pairs, 1:] != -100).sum()
    else:
        nll_tokens = batch["attention_mask"][:n_pairs, 1:].sum()
    return torch.tensor([float(n_pairs), float(nll_tokens)], dtype=torch.float64)


def micro_batch_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    cfg: LossConfig,
    counts: GlobalCounts,
    world_size: int,
    reference: ReferenceLogps | None = None,
    chunked: bool = False,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, Metrics, int]:
    """Loss to backpropagate for one micro-batch, its metrics (batch means) and its pair count.

    The returned loss is Σ_pairs loss / global pairs × world_size: data-parallel gradient
    averaging divides by world_size again, leaving the global-batch mean.
    """
    logps = concatenated_forward(model, batch, cfg.nll_span, chunked, chunk_size)
    ref = None
    if cfg.type.needs_reference_model:
        if "ref_chosen_logps" in batch:
            ref = (batch["ref_chosen_logps"], batch["ref_rejected_logps"])
        elif reference is not None:
            ref = reference(batch)
        else:
            raise ValueError("DPO needs reference log-probs: a reference model or precomputed columns")
    nll = chosen_nll_term(logps, cfg, counts)
    losses, metrics = OBJECTIVES[cfg.type](logps, nll, cfg, ref)  # (B,)
    metrics["loss"] = losses.detach().mean()
    metrics.setdefault("nll", nll.detach().float().mean())
    loss = losses.sum() * (world_size / counts.pairs)
    return loss, metrics, logps.chosen.sum.shape[0]


class ModelReference:
    """Reference log-probs from a frozen model (or, for LoRA, the policy with adapters off)."""

    def __init__(self, model: torch.nn.Module, disable_adapter: bool = False, chunked: bool = False,
                 chunk_size: int = 1024):
        self.model, self.disable_adapter = model, disable_adapter
        self.chunked, self.chunk_size = chunked, chunk_size
        if not disable_adapter:
            model.eval()  # (a DeepSpeed engine's eval() returns None: no chaining)
            model.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.disable_adapter:
            with self.model.disable_adapter():
                logps = concatenated_forward(self.model, batch, chunked=self.chunked, chunk_size=self.chunk_size)
        else:
            logps = concatenated_forward(self.model, batch, chunked=self.chunked, chunk_size=self.chunk_size)
        return logps.chosen.sum.detach(), logps.rejected.sum.detach()
