"""Losses: hand-derived golden values, parity with TRL, numerics at the extremes, properties."""

import collections
import math
import types

import pytest
import torch

from orpo.losses import LossType, dpo_loss, log1mexp, orpo_loss, sft_loss, simpo_loss


def test_orpo_golden_value():
    """ℓw = ln 0.5, ℓl = ln 0.25, NLL = 2, λ = 0.5.

    odds_w = 0.5 / 0.5 = 1          -> log odds_w = 0
    odds_l = 0.25 / 0.75 = 1/3      -> log odds_l = -ln 3
    log_odds = 0 - (-ln 3) = ln 3 = 1.0986123
    log σ(ln 3) = ln(3/4) = -0.2876821
    L = 2 - 0.5 · (-0.2876821) = 2.1438410
    rewards: λ·ℓw = -0.3465736, λ·ℓl = -0.6931472, margin 0.3465736.
    """
    losses, m = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]), torch.tensor([2.0]), lam=0.5)
    assert losses.item() == pytest.approx(2.1438410, abs=1e-6)
    assert m["log_odds"].item() == pytest.approx(1.0986123, abs=1e-6)
    assert m["log_odds_ratio"].item() == pytest.approx(-0.2876821, abs=1e-6)
    assert m["nll"].item() == pytest.approx(2.0)
    assert m["rewards/chosen"].item() == pytest.approx(-0.3465736, abs=1e-6)
    assert m["rewards/rejected"].item() == pytest.approx(-0.6931472, abs=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(0.3465736, abs=1e-6)
    assert m["rewards/accuracies"].item() == 1.0


def test_simpo_golden_value():
    """ℓw = -1, ℓl = -2, β = 2, γ/β = 0.5: h = (-1 + 2) - 0.5 = 0.5, β·h = 1.

    ε = 0:   L = -log σ(1) = log(1 + e^-1) = 0.3132617
    ε = 0.1: L = 0.9 · 0.3132617 + 0.1 · log(1 + e^1) = 0.2819355 + 0.1313262 = 0.4132617
    """
    losses, m = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma_beta_ratio=0.5)
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(2.0)
    smoothed, _ = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), 2.0, 0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.4132617, abs=1e-6)


def test_dpo_golden_value():
    """Policy (-10, -12), reference (-11, -11), β = 0.5: h = (−10+11) − (−12+11) = 2, β·h = 1.

    L = -log σ(1) = 0.3132617; rewards β·(1) = 0.5 and β·(−1) = −0.5.
    """
    losses, m = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), 0.5)
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert m["rewards/chosen"].item() == pytest.approx(0.5)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5)


def test_sft_loss_is_the_nll():
    losses, m = sft_loss(torch.tensor([1.5, 2.5]), torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0]))
    assert losses.tolist() == [1.5, 2.5]
    assert m["nll"].item() == 2.0 and m["logps/rejected"].item() == -3.5


def _random_logps(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(n, generator=g) * 5 - 1e-3, -torch.rand(n, generator=g) * 5 - 1e-3


def test_orpo_matches_trl():
    from trl.experimental.orpo import ORPOTrainer

    chosen, rejected = _random_logps()
    nll = torch.rand(16) * 3
    lam = 0.25
    fake = types.SimpleNamespace(beta=lam, accelerator=types.SimpleNamespace(device="cpu"))
    trl_losses, trl_chosen_r, trl_rejected_r, trl_ratio, trl_log_odds = ORPOTrainer.odds_ratio_loss(fake, chosen, rejected)
    ours, m = orpo_loss(chosen, rejected, nll, lam)
    # TRL: loss = nll.mean() - losses.mean(); ours: per-pair nll - λ·logσ, averaged by the caller.
    torch.testing.assert_close(ours.mean(), nll.mean() - trl_losses.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["log_odds_ratio"], trl_ratio, rtol=0, atol=1e-6)
    torch.testing.assert_close(m["log_odds"], trl_log_odds, rtol=0, atol=1e-6)
    torch.testing.assert_close(m["rewards/chosen"], trl_chosen_r.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(m["rewards/accuracies"], (trl_chosen_r > trl_rejected_r).float().mean())


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_matches_trl_cpo(label_smoothing):
    from trl.experimental.cpo import CPOTrainer

    chosen, rejected = _random_logps(seed=1)
    beta, gamma_beta_ratio = 2.5, 0.55
    fake = types.SimpleNamespace(alpha=0.0, loss_type="simpo", beta=beta, simpo_gamma=gamma_beta_ratio * beta,
                                 label_smoothing=label_smoothing, accelerator=types.SimpleNamespace(device="cpu"))
    trl_losses, trl_chosen_r, trl_rejected_r = CPOTrainer.cpo_loss(fake, chosen, rejected)
    ours, m = simpo_loss(chosen, rejected, beta, gamma_beta_ratio, label_smoothing)
    torch.testing.assert_close(ours, trl_losses, rtol=0, atol=1e-6)
    torch.testing.assert_close(m["rewards/chosen"], trl_chosen_r.mean(), rtol=0, atol=1e-6)


def test_dpo_matches_trl():
    """Drive TRL's DPOTrainer._compute_loss with a stand-in model that returns given token log-probs."""
    from trl import DPOTrainer

    n_pairs, seq = 4, 7
    g = torch.Generator().manual_seed(2)
    token_logps = -torch.rand(2 * n_pairs, seq - 1, generator=g) * 3  # (2B, T-1)
    completion_mask = torch.ones(2 * n_pairs, seq, dtype=torch.long)
    completion_mask[:, :3] = 0
    masked = token_logps * completion_mask[:, 1:]
    ref_chosen, ref_rejected = -torch.rand(n_pairs, generator=g) * 10, -torch.rand(n_pairs, generator=g) * 10

    class StandIn:
        training = True

        def __call__(self, **_):
            zeros = torch.zeros_like(masked)
            return types.SimpleNamespace(log_probs=masked, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    metrics = collections.defaultdict(lambda: collections.defaultdict(list))
    accelerator = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x)
    fake = types.SimpleNamespace(
        model=StandIn(), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0], beta=0.1, label_smoothing=0.0,
        use_weighting=False, _metrics=metrics, _total_train_tokens=0, _tp_size=1, args=types.SimpleNamespace())
    inputs = dict(input_ids=torch.zeros(2 * n_pairs, seq, dtype=torch.long),
                  attention_mask=torch.ones(2 * n_pairs, seq, dtype=torch.long), completion_mask=completion_mask,
                  ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    trl_loss = DPOTrainer._compute_loss(fake, StandIn(), inputs, return_outputs=False)

    sums = masked.sum(-1)
    ours, m = dpo_loss(sums[:n_pairs], sums[n_pairs:], ref_chosen, ref_rejected, beta=0.1)
    torch.testing.assert_close(ours.mean(), trl_loss, rtol=0, atol=1e-6)
    assert m["rewards/margins"].item() == pytest.approx(metrics["train"]["rewards/margins"][0], abs=1e-6)
    assert m["rewards/accuracies"].item() == pytest.approx(metrics["train"]["rewards/accuracies"][0], abs=1e-6)


def test_log1mexp_accuracy_across_the_range():
    x = -torch.logspace(-7, math.log10(80), 400, dtype=torch.float64)
    exact = torch.log(-torch.expm1(x))  # float64, where this form is exact enough everywhere here
    exact = torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), exact)
    ours = log1mexp(x.float()).double()
    torch.testing.assert_close(ours, exact, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("chosen,rejected", [(-80.0, -1e-7), (-1e-7, -80.0), (-1e-7, -1e-7), (-80.0, -80.0),
                                             (-0.6931, -0.6932), (-30.0, -1e-3)])
def test_orpo_finite_values_and_gradients_at_extremes(chosen, rejected):
    chosen_t = torch.tensor([chosen], requires_grad=True)
    rejected_t = torch.tensor([rejected], requires_grad=True)
    nll = torch.tensor([1.0], requires_grad=True)
    losses, metrics = orpo_loss(chosen_t, rejected_t, nll, lam=1.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all()
    for grad in (chosen_t.grad, rejected_t.grad, nll.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert all(torch.isfinite(v) for v in metrics.values())


def test_orpo_half_precision_inputs_computed_in_fp32():
    chosen, rejected = torch.tensor([-1e-3], dtype=torch.bfloat16), torch.tensor([-5.0], dtype=torch.bfloat16)
    losses, _ = orpo_loss(chosen, rejected, torch.tensor([1.0], dtype=torch.bfloat16), lam=1.0)
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()


def test_preferring_chosen_lowers_every_loss():
    low, high = torch.tensor([-3.0]), torch.tensor([-1.0])
    nll = torch.tensor([1.0])
    assert orpo_loss(high, low, nll, 1.0)[0] < orpo_loss(low, high, nll, 1.0)[0]
    assert simpo_loss(high, low, 2.0, 0.5)[0] < simpo_loss(low, high, 2.0, 0.5)[0]
    ref = torch.tensor([-2.0])
    assert dpo_loss(high, low, ref, ref, 0.1)[0] < dpo_loss(low, high, ref, ref, 0.1)[0]


def test_metrics_are_detached_scalars():
    chosen = torch.tensor([-1.0, -2.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -1.5], requires_grad=True)
    nll = torch.tensor([1.0, 2.0], requires_grad=True)
    for _, metrics in (orpo_loss(chosen, rejected, nll, 0.1), simpo_loss(chosen, rejected, 2.0, 0.5),
                       dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), 0.1), sft_loss(nll, chosen, rejected)):
        for name, value in metrics.items():
            assert not value.requires_grad, name
            assert value.dim() == 0, name


def test_loss_type_properties():
    assert [t for t in LossType if t.needs_reference_model] == [LossType.DPO]
    assert [t for t in LossType if not t.uses_rejected] == [LossType.SFT]
    assert not LossType.DPO.length_normalized_logps and LossType.ORPO.length_normalized_logps
    assert LossType("orpo") is LossType.ORPO
