"""Per-sequence log-probs of chosen and rejected responses from one concatenated forward.

A batch (see ``orpo.collate``) holds the chosen sequences in rows ``[:B]`` and the rejected
ones in rows ``[B:]`` of ``input_ids`` / ``attention_mask`` / ``labels``; ``labels`` is
``input_ids`` with the prompt and the padding set to ``IGNORE_INDEX``. Token ``t`` is
predicted by the logits at ``t - 1``.

Two paths give identical values and gradients:
- direct: the model's ``[2B, T, V]`` logits, log-softmaxed in fp32;
- chunked: the decoder's hidden states are projected through the LM head a chunk of tokens at
  a time under activation checkpointing, so fp32 ``[2B, T, V]`` logits never exist, neither in
  the forward nor as saved activations. Only non-padding tokens are projected.
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


def supports_chunked(model: torch.nn.Module) -> bool:
    """Whether the chunked path reproduces the model's logits: a plain linear LM head on top."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_output_embeddings"):
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    return isinstance(model.get_output_embeddings(), torch.nn.Module)


def use_chunked(model: torch.nn.Module, mode: LogitsMode) -> bool:
    """Resolve ``LogitsMode.AUTO``; refuse ``CHUNKED`` for models it would compute wrongly."""
    mode = LogitsMode(mode)
    if mode is LogitsMode.DIRECT:
        return False
    supported = supports_chunked(model)
    if mode is LogitsMode.CHUNKED:
        if not supported:
            raise ValueError(
                f"logits_mode=chunked is not supported for {type(model).__name__}: it needs a "
                "plain LM head without logit soft-capping or scaling; use logits_mode=direct"
            )
        return True
    return supported and model.get_output_embeddings().weight.shape[0] >= CHUNKED_AUTO_MIN_VOCAB


def token_logps_chunked(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Next-token log-probs ``(N, T-1)`` (0 at padding) without materialising ``[N, T, V]``."""
    decoder = _decoder(model)
    lm_head = model.get_output_embeddings()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    targets_valid = attention_mask[:, 1:].bool()  # (N, T-1)
    hidden_valid = hidden[:, :-1][targets_valid]  # (M, H), M = real target tokens
    targets = input_ids[:, 1:][targets_valid]  # (M,)
    pieces = [
        checkpoint(_chunk_logps, lm_head, hidden_valid[i : i + chunk_size], targets[i : i + chunk_size], use_reentrant=False)
        for i in range(0, hidden_valid.shape[0], chunk_size)
    ]
    out = hidden.new_zeros(targets_valid.shape, dtype=torch.float32)  # (N, T-1)
    if pieces:
        out = out.masked_scatter(targets_valid, torch.cat(pieces))
    return out


def _chunk_logps(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()  # (chunk, V): recomputed in backward, never stored
    return -F.cross_entropy(logits, targets, reduction="none")


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body under the LM head (unwrapping PEFT's wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def concatenated_forward(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    nll_span: NllSpan = NllSpan.PROMPT_AND_RESPONSE,
    chunked: bool = False,
    chunk_size: int = 1024,
) -> PairLogps:
    """One forward over chosen and rejected together; per-sequence stats for the losses."""
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
