"""Preference objectives as pure functions of per-sequence log-probs: ORPO, SimPO, DPO and SFT.

Every loss takes per-sequence tensors of shape ``(B,)`` and returns ``(losses, metrics)``:
``losses`` of shape ``(B,)`` (one per pair, so the caller chooses how to normalise across
micro-batches and ranks) and ``metrics``, a dict of detached scalar tensors (batch means).
The math runs in fp32 whatever the input dtype. Nothing here touches devices or ranks.
"""

from __future__ import annotations

import enum
import math

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]

_LN_HALF = -math.log(2.0)


class LossType(str, enum.Enum):
    """The training objectives this project implements."""

    ORPO = "orpo"
    SIMPO = "simpo"
    DPO = "dpo"
    SFT = "sft"

    @property
    def default_beta(self) -> float | None:
        """β when the config leaves it unset: DPO's KL strength 0.1 (Rafailov et al.); SimPO's
        reward scale 2.0 (the SimPO repo's Mistral/Llama-3 base recipes use 2.0-2.5, 10 for
        Llama-3-Instruct). ORPO and SFT have no β."""
        return {LossType.DPO: 0.1, LossType.SIMPO: 2.0}.get(self)

    @property
    def needs_reference_model(self) -> bool:
        """DPO compares against a frozen reference policy; the others are reference-free."""
        return self is LossType.DPO

    @property
    def uses_rejected(self) -> bool:
        """SFT trains on chosen responses only; rejected ones are still scored for monitoring."""
        return self is not LossType.SFT

    @property
    def uses_chosen_nll(self) -> bool:
        """ORPO and SFT carry a language-modelling term on the chosen response."""
        return self in (LossType.ORPO, LossType.SFT)

    @property
    def length_normalized_logps(self) -> bool:
        """ORPO and SimPO use mean per-token log-probs; DPO uses summed log-probs."""
        return self is not LossType.DPO


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable across the range (Mächler 2012).

    Above -ln 2, ``1 - exp(x)`` cancels catastrophically, so use ``log(-expm1(x))``;
    below, ``exp(x)`` is small and ``log1p(-exp(x))`` is exact.
    x = 0 (a certain response) gives -inf; callers clamp to x < 0.
    """
    x = x.float()
    return torch.where(x > _LN_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# Mean log-probs closer to 0 than this make log(1 - p) = -inf; gradients then vanish, so clamp.
_MAX_MEAN_LOGP = -1e-7


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, Metrics]:
    """ORPO objective (Hong et al. 2024, arXiv 2403.07691, Eq. 6-7).

        odds(y|x)   = P(y|x) / (1 - P(y|x)),   log P(y|x) = ℓ = mean token log-prob   (Eq. 4)
        log_odds    = (ℓw - ℓl) - (log(1 - e^ℓw) - log(1 - e^ℓl))                     (Eq. 5)
        L_OR        = -log σ(log_odds)                                                 (Eq. 7)
        L_ORPO      = L_SFT + λ · L_OR                                                 (Eq. 6)

    Args:
        chosen_logps, rejected_logps: ``(B,)`` mean log-prob over each response's tokens.
        chosen_nll: ``(B,)`` the chosen response's NLL term. Its normalisation (per token of the
            global batch, or per sequence) is the caller's choice; see ``orpo.trainer``.
        lam: λ, the weight of the odds-ratio term.

    Returns:
        ``losses`` ``(B,)`` = ``chosen_nll - λ·log σ(log_odds)`` and metrics, including the
        rewards TRL logs (``λ·ℓ``).
    """
    chosen = chosen_logps.float().clamp(max=_MAX_MEAN_LOGP)
    rejected = rejected_logps.float().clamp(max=_MAX_MEAN_LOGP)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))  # (B,)
    log_odds_ratio = F.logsigmoid(log_odds)  # (B,)
    losses = chosen_nll.float() - lam * log_odds_ratio
    metrics = {
        "log_odds_ratio": log_odds_ratio.mean(),
        "log_odds": log_odds.mean(),
        "nll": chosen_nll.float().mean(),
        **_reward_metrics(lam * chosen_logps.float(), lam * rejected_logps.float()),
        **_logp_metrics(chosen_logps, rejected_logps),
    }
    return losses, _detached(metrics)


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """SimPO objective (Meng et al. 2024, arXiv 2405.14734, Eq. 6), as the official code has it.

        L = -log σ(β·(ℓw - ℓl) - γ),    with γ given as γ/β:   h = ℓw - ℓl - γ/β
        L = -(1 - ε)·log σ(β·h) - ε·log σ(-β·h)     (ε = label_smoothing)

    Args:
        chosen_logps, rejected_logps: ``(B,)`` mean log-prob over each response's tokens.
        beta: β, the reward scale.
        gamma_beta_ratio: γ/β, the target reward margin divided by β.
        label_smoothing: ε, conservative label smoothing (0 is plain SimPO).
    """
    chosen, rejected = chosen_logps.float(), rejected_logps.float()
    logits = (chosen - rejected) - gamma_beta_ratio  # (B,)
    losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(
        -beta * logits
    ) * label_smoothing
    metrics = {**_reward_metrics(beta * chosen, beta * rejected), **_logp_metrics(chosen, rejected)}
    return losses, _detached(metrics)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, Metrics]:
    """Sigmoid DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7) with conservative smoothing.

        h = (log πθ(yw) - log πref(yw)) - (log πθ(yl) - log πref(yl))
        L = -(1 - ε)·log σ(β·h) - ε·log σ(-β·h)            (cDPO, Mitchell 2023)

    Args:
        chosen_logps, rejected_logps: ``(B,)`` summed log-prob of each response under the policy.
        ref_chosen_logps, ref_rejected_logps: ``(B,)`` the same under the frozen reference.
        beta: β, the KL-penalty strength.
        label_smoothing: ε, the assumed probability that a preference label is flipped.
    """
    chosen_ratio = chosen_logps.float() - ref_chosen_logps.float()  # (B,)
    rejected_ratio = rejected_logps.float() - ref_rejected_logps.float()  # (B,)
    logits = chosen_ratio - rejected_ratio
    losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(
        -beta * logits
    ) * label_smoothing
    metrics = {
        **_reward_metrics(beta * chosen_ratio, beta * rejected_ratio),
        **_logp_metrics(chosen_logps, rejected_logps),
    }
    return losses, _detached(metrics)


def sft_loss(
    chosen_nll: torch.Tensor,
    chosen_logps: torch.Tensor | None = None,
    rejected_logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Supervised fine-tuning on the chosen response: L = NLL(yw | x).

    The rejected response does not enter the loss; when its log-probs are given they are
    reported, so SFT runs can be compared with ORPO (the ORPO paper's Figure 3).

    Args:
        chosen_nll: ``(B,)`` the chosen NLL term, normalised by the caller as for ORPO.
        chosen_logps, rejected_logps: optional ``(B,)`` mean log-probs, for metrics only.
    """
    losses = chosen_nll.float()
    metrics: Metrics = {"nll": losses.mean()}
    if chosen_logps is not None and rejected_logps is not None:
        metrics.update(_logp_metrics(chosen_logps, rejected_logps))
    return losses, _detached(metrics)


def _reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Metrics:
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
    }


def _logp_metrics(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> Metrics:
    # The log-prob margin does not depend on λ or β, so it compares runs across them.
    return {"logps/chosen": chosen_logps.float().mean(), "logps/rejected": rejected_logps.float().mean(),
            "logps/margin": (chosen_logps.float() - rejected_logps.float()).mean()}


def _detached(metrics: Metrics) -> Metrics:
    return {name: value.detach() for name, value in metrics.items()}
