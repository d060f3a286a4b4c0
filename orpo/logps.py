"""Per-sequence log-probs of chosen and rejected responses from one concatenated forward.

A batch (see ``orpo.collate``) holds the chosen sequences in rows ``[:B]`` and the rejected
ones in rows ``[B:]`` of ``input_ids`` / ``attention_mask`` / ``labels``; ``labels`` is
``input_ids`` with the prompt and the padding set to ``IGNORE_INDEX``. Token ``t`` is
predicted by the logits at ``t - 1``.

Two paths give identical values and gradients:
- direct: the model's ``[2B, T, V]`` logits, log-softmaxed in fp32;
- chunked: the decoder's hidden states are projected through the LM head a chunk of tokens at
  a time under activation checkpointing, so fp32 ``[2B, T, V]`` logits never exist, neither in
  the forward nor as saved activations. Only non-padding tokens are projected. The hidden
  states come from the model's own forward (``logits_to_keep=1``), never from its submodules,
  so a DeepSpeed engine passed as the model runs its per-micro-batch bookkeeping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


class NllSpan(str, enum.Enum):
    """Which tokens of the chosen sequence the NLL term covers."""

    PROMPT_AND_RESPONSE = "prompt_and_response"  # the ORPO paper's and TRL's default
    RESPONSE = "response"


class LogitsMode(str, enum.Enum):
    """How log-probs are computed from the model."""

    AUTO = "auto"  # chunked when the vocabulary is large and the model supports it
    DIRECT = "direct"
    CHUNKED = "chunked"


# Vocabularies at least this large use the chunked path under LogitsMode.AUTO.
CHUNKED_AUTO_MIN_VOCAB = 16_384


@dataclass
class SequenceStats:
    """Per-sequence sums over a token mask: ``sum``, ``count`` and ``mean`` of shape (N,)."""

    sum: torch.Tensor
    count: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp(min=1)


@dataclass
class PairLogps:
    """What the losses need from one concatenated forward of B pairs (all fp32, shape (B,))."""

    chosen: SequenceStats  # response tokens of the chosen sequence
    rejected: SequenceStats  # response tokens of the rejected sequence
    chosen_nll: SequenceStats  # negative log-likelihood of the chosen sequence over the NLL span


def masked_sequence_stats(token_logps: torch.Tensor, mask: torch.Tensor) -> SequenceStats:
    """Sum and count of ``token_logps`` ``(N, T)`` over ``mask`` ``(N, T)``, per row."""
    mask = mask.to(token_logps.dtype)
    return SequenceStats(sum=(token_logps * mask).sum(-1), count=mask.sum(-1))


def token_logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token: ``logits`` (N, T, V) and ``labels`` (N, T) -> (N, T-1), fp32.

    Positions whose label is ``IGNORE_INDEX`` get 0 (mask them with ``labels != IGNORE_INDEX``).
    Cross-entropy over the unshifted logits (targets shifted instead) keeps no extra (N, T, V)
    copy alive for backward, unlike gather + logsumexp over a sliced view.
    """
    n_rows, length = labels.shape
    targets = torch.cat([labels[:, 1:], labels.new_full((n_rows, 1), IGNORE_INDEX)], dim=1)  # (N, T)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none")  # (N*T,)
    return -nll.view(n_rows, length)[:, :-1]


def response_logps(logits: torch.Tensor, labels: torch.Tensor) -> SequenceStats:
    """Per-sequence sum, count and mean of response log-probs from model logits and labels."""
    token_logps = token_logps_from_logits(logits, labels)
    return masked_sequence_stats(token_logps, labels[:, 1:] != IGNORE_INDEX)


# Config fields (of the model or its text config) that change logits after the LM head. Soft-caps
# are invisible to the numeric check on a random-init model (tanh(x/c)*c ~ x for small x), so
# they are refused by name; scales are refused unless 1, and also caught numerically.
LOGIT_SOFTCAP_FIELDS = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap", "logit_softcap")
LOGIT_SCALE_FIELDS = ("logit_scale", "logits_scaling", "lm_head_multiplier", "output_multiplier",
                      "logits_mup_width_multiplier")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model under DeepSpeed/DDP (``.module``) and PEFT wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def logit_transform_fields(model: torch.nn.Module) -> list[str]:
    """Config fields of ``model`` that soft-cap or scale its logits after the LM head."""
    config = getattr(_unwrap(model), "config", None)
    if config is None:
        return []
    configs = [config]
    if hasattr(config, "get_text_config") and config.get_text_config() is not config:
        configs.append(config.get_text_config())
    found = []
    for cfg in configs:
        found += [f for f in LOGIT_SOFTCAP_FIELDS if getattr(cfg, f, None)]
        found += [f for f in LOGIT_SCALE_FIELDS if getattr(cfg, f, None) not in (None, 1, 1.0)]
    return found


def _is_partitioned_outside_engine(model: torch.nn.Module) -> bool:
    """ZeRO-3 parameters not yet wrapped by ``deepspeed.initialize`` (no forward possible)."""
    if hasattr(model, "zero_optimization_stage"):  # a DeepSpeed engine: its hooks gather weights
        return False
    return any(hasattr(p, "ds_id") for p in model.parameters())


@torch.no_grad()
def lm_head_reproduces_logits(model: torch.nn.Module, n_tokens: int = 8) -> bool:
    """One tiny forward: does ``lm_head(final hidden state)`` equal the model's logits?

    Catches logit scaling (Granite's ``logits_scaling``, Falcon-H1's ``lm_head_multiplier``, ...)
    and models whose ``hidden_states[-1]`` is not the LM head's input, whatever the field names.
    Runs in eval mode (no dropout, no RNG drawn); a collective under ZeRO-3, so every rank calls it.
    """
    lm_head = model.get_output_embeddings()
    device = lm_head.weight.device
    vocab = lm_head.weight.shape[0] if lm_head.weight.dim() == 2 else _unwrap(model).config.vocab_size
    input_ids = (torch.arange(n_tokens, device=device) * 7919 % vocab).unsqueeze(0)  # (1, n)
    was_training = model.training
    model.eval()
    try:
        hidden, logits = final_hidden_states(model, input_ids, torch.ones_like(input_ids))
        if logits.shape[1] != 1:
            return False  # logits_to_keep ignored: chunking would not save the [N, T, V] logits
        projected = lm_head(hidden[:, -1:]).float()  # (1, 1, V)
        expected = logits.float()
    except (TypeError, AttributeError, IndexError):
        return False  # no logits_to_keep / hidden_states: not a standard causal LM
    finally:
        model.train(was_training)
    scale = float(expected.abs().max()) + 1e-6
    return bool(torch.allclose(projected, expected, rtol=1e-3, atol=1e-3 * scale))


def supports_chunked(model: torch.nn.Module) -> bool:
    """Whether the chunked path reproduces the model's logits: a plain linear LM head on top.

    Runs one tiny forward (``lm_head_reproduces_logits``); under ZeRO-3 pass the DeepSpeed engine.
    """
    if not hasattr(model, "get_output_embeddings") or getattr(_unwrap(model), "config", None) is None:
        return False
    if not isinstance(model.get_output_embeddings(), torch.nn.Module) or logit_transform_fields(model):
        return False
    if _is_partitioned_outside_engine(model):
        raise ValueError("supports_chunked needs a model that can run a forward: under ZeRO-3 pass the "
                         "DeepSpeed engine (after deepspeed.initialize), not the partitioned module")
    return lm_head_reproduces_logits(model)


def use_chunked(model: torch.nn.Module, mode: LogitsMode) -> bool:
    """Resolve ``LogitsMode.AUTO``; refuse ``CHUNKED`` for models it would compute wrongly."""
    mode = LogitsMode(mode)
    if mode is LogitsMode.DIRECT:
        return False
    if mode is LogitsMode.AUTO and _vocab_size(model) < CHUNKED_AUTO_MIN_VOCAB:
        return False
    if not supports_chunked(model):
        if mode is LogitsMode.CHUNKED:
            raise ValueError(
                f"logits_mode=chunked is not supported for {type(_unwrap(model)).__name__}: it needs a "
                "plain LM head without logit soft-capping or scaling "
                f"({', '.join(logit_transform_fields(model)) or 'lm_head(hidden) != logits'}); "
                "use logits_mode=direct"
            )
        return False
    return True


def _vocab_size(model: torch.nn.Module) -> int:
    weight = model.get_output_embeddings().weight
    if weight.dim() == 2 and weight.shape[0] > 0:
        return weight.shape[0]
    return int(getattr(weight, "ds_shape", [0])[0] or _unwrap(model).config.vocab_size)  # ZeRO-3 partitioned


def final_hidden_states(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        logits_to_keep: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's output (after the final norm) ``(N, T, H)`` and the last ``logits_to_keep``
    positions' logits ``(N, logits_to_keep, V)``, from one call of ``model``'s own forward.

    Calling the model itself, never its submodules, matters under DeepSpeed: the engine's
    forward resets ZeRO's per-micro-batch backward state and hooks its outputs (among them the
    hidden states) to start the backward bookkeeping; skipping it loses all but the last
    micro-batch's gradient under ZeRO-3 with accumulation. In transformers 5 ``hidden_states[-1]``
    is the decoder's ``last_hidden_state`` (``capture_outputs(tie_last_hidden_states=True)``);
    ``lm_head_reproduces_logits`` checks that numerically for the model at hand.
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                output_hidden_states=True, logits_to_keep=logits_to_keep)
    return out.hidden_states[-1], out.logits


def token_logps_chunked(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Next-token log-probs ``(N, T-1)`` (0 at padding) without materialising ``[N, T, V]``."""
    hidden, _ = final_hidden_states(model, input_ids, attention_mask)  # (N, T, H); logits (N, 1, V) unused
    targets_valid = attention_mask[:, 1:].bool()  # (N, T-1)
    hidden_valid = hidden[:, :-1][targets_valid]  # (M, H), M = real target tokens
    targets = input_ids[:, 1:][targets_valid]  # (M,)
    logps = _chunked_target_logps(model.get_output_embeddings(), hidden_valid, targets, chunk_size)  # (M,)
    out = hidden.new_zeros(targets_valid.shape, dtype=torch.float32)  # (N, T-1)
    return out.masked_scatter(targets_valid, logps)


def _chunked_target_logps(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                          chunk_size: int) -> torch.Tensor:
    """Log-probs ``(M,)`` of ``targets`` under ``lm_head(hidden)``, a chunk of rows at a time under
    activation checkpointing, inside ONE call of the ``lm_head`` module.

    One call, whatever the number of tokens: ZeRO-3 gathers the head's weight in the module's
    hooks (a collective), so per-chunk calls would issue a different number of all-gathers on
    ranks holding different numbers of tokens and deadlock. Inside the call the chunks use the
    head's own ``forward`` (no hooks); in backward the module's pre-backward hook has gathered the
    weight again before the chunks are recomputed.
    """
    original_forward = lm_head.forward
    had_instance_forward = "forward" in lm_head.__dict__

    def chunked_forward(rows: torch.Tensor) -> torch.Tensor:
        pieces = [checkpoint(_chunk_logps, original_forward, rows[i : i + chunk_size], targets[i : i + chunk_size],
                             use_reentrant=False)
                  for i in range(0, rows.shape[0], chunk_size)]
        return torch.cat(pieces) if pieces else rows.new_zeros(0, dtype=torch.float32)

    lm_head.forward = chunked_forward
    try:
        return lm_head(hidden)
    finally:
        if had_instance_forward:
            lm_head.forward = original_forward
        else:
            del lm_head.forward


def _chunk_logps(project, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = project(hidden).float()  # (chunk, V): recomputed in backward, never stored
    return -F.cross_entropy(logits, targets, reduction="none")


def concatenated_forward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    nll_span: NllSpan = NllSpan.PROMPT_AND_RESPONSE,
    chunked: bool = False,
    chunk_size: int = 1024,
) -> PairLogps:
    """One forward over chosen and rejected together; per-sequence stats for the losses.

    A packed batch (``orpo.packing.PackedCollator``) goes through ``orpo.packing.packed_forward``.
    """
    if "segment_ids" in batch:
        from orpo.packing import packed_forward  # orpo.packing builds on this module

        return packed_forward(model, batch, nll_span, chunked, chunk_size)
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if chunked:
        token_logps = token_logps_chunked(model, input_ids, attention_mask, chunk_size)  # (2B, T-1)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        token_logps = token_logps_from_logits(logits, input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX))
    n_pairs = input_ids.shape[0] // 2
    response = masked_sequence_stats(token_logps, labels[:, 1:] != IGNORE_INDEX)  # (2B,)
    if NllSpan(nll_span) is NllSpan.RESPONSE:
        nll_mask = labels[:n_pairs, 1:] != IGNORE_INDEX
    else:
        nll_mask = attention_mask[:n_pairs, 1:].bool()
    chosen_lp = masked_sequence_stats(token_logps[:n_pairs], nll_mask)
    return PairLogps(
        chosen=SequenceStats(response.sum[:n_pairs], response.count[:n_pairs]),
        rejected=SequenceStats(response.sum[n_pairs:], response.count[n_pairs:]),
        chosen_nll=SequenceStats(-chosen_lp.sum, chosen_lp.count),
    )
