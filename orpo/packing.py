"""Padding-free packing: every chosen and rejected sequence of a micro-batch in one row.

A packed batch of B pairs is one row of ``L = Σ sequence lengths`` tokens (plus, optionally,
padding up to a multiple of ``pad_to_multiple_of``), holding the chosen sequences of the pairs
in order, then the rejected ones, exactly the sequences ``orpo.collate.PreferenceCollator``
puts in rows ``[:B]`` and ``[B:]``:

- ``position_ids`` restart at 0 at every sequence;
- ``segment_ids`` give each token its sequence: ``i`` for pair ``i``'s chosen sequence,
  ``B + i`` for its rejected one, -1 for padding;
- ``labels`` are the tokens with the prompt and padding set to ``IGNORE_INDEX``.

The model is called with ``position_ids`` and **no** ``attention_mask``. transformers (5.x)
then derives the sequence boundaries from the restarting positions: ``masking_utils.
find_packed_sequence_indices`` builds a block-diagonal causal mask for sdpa, eager and flex
attention, and flash-attention 2/3 run their varlen kernels on the boundaries
(``modeling_flash_attention_utils._is_packed_sequence``, which needs exactly one row: hence one
row). A model whose attention ignores this would let tokens attend across sequences;
``packing_is_exact`` checks that numerically and ``use_packing`` refuses such models.

On sdpa the block-diagonal mask costs attention over the whole row (quadratic in its length,
several times the padded batch's attention at a few thousand tokens), so ``use_packing`` switches
an sdpa model to ``VARLEN_SDPA``: the same sdpa kernel called once per packed sequence with
``is_causal`` (the varlen kernels' arithmetic, on any device), and plain sdpa for any input that
is not one packed row. The numeric check then runs on that path.

Log-probs: only in-sequence next-token targets are scored (the first token of a sequence is
predicted from nothing), through the LM head directly or in chunks (``orpo.logps``), and summed
per sequence with ``index_add`` over the segment ids: the same ``PairLogps`` as the padded path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from orpo.collate import REFERENCE_COLUMNS
from orpo.logps import (
    IGNORE_INDEX,
    NllSpan,
    PairLogps,
    SequenceStats,
    _chunked_target_logps,
    _unwrap,
)

PackingMode = bool | Literal["auto"]
VARLEN_SDPA = "orpo_varlen_sdpa"


def varlen_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, *args: Any, position_ids: torch.Tensor | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, run per sequence on one packed row (query ``(1, H, L, D)``).

    Sequences start where ``position_ids`` (1, L) is 0; each gets causal attention over itself
    alone, so the cost is Σ T_i², not L². Anything else (several rows, a KV cache, no position
    ids) goes to plain sdpa with its mask. Returns ``(1, L, H, D)`` as sdpa does.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = query.shape[2]
    if (position_ids is None or query.shape[0] != 1 or key.shape[2] != length
            or position_ids.shape[-1] != length):
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    starts = (position_ids.reshape(-1) == 0).nonzero().flatten().tolist()
    if starts[:1] != [0]:
        starts = [0, *starts]
    if len(starts) == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    kwargs.pop("is_causal", None)
    bounds = [*starts, length]
    pieces = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, *args,
                                     is_causal=True, **kwargs)[0]
              for a, b in itertools.pairwise(bounds)]
    return torch.cat(pieces, dim=1), None


def _register_varlen_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_attention)
    AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)  # plain sdpa inputs keep their masks


def is_packed(batch: dict[str, Any]) -> bool:
    return "segment_ids" in batch


class PackedCollator:
    """Collate ``orpo.data.tokenize_pair`` examples into one packed row (see the module docstring).

    Output tensors: ``input_ids``, ``position_ids``, ``segment_ids``, ``labels`` of shape (1, L);
    ``index`` (B,); ``padding_fraction`` (0-d): padded / all positions (0 unless
    ``pad_to_multiple_of`` is set); the reference columns when present, as the padded collator.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [(ex["prompt_ids"], ex["chosen_ids"]) for ex in examples]
        sequences += [(ex["prompt_ids"], ex["rejected_ids"]) for ex in examples]
        ids, positions, segments, labels = [], [], [], []
        for segment, (prompt, response) in enumerate(sequences):
            n = len(prompt) + len(response)
            ids += list(prompt) + list(response)
            positions += range(n)
            segments += [segment] * n
            labels += [IGNORE_INDEX] * len(prompt) + list(response)
        real = len(ids)
        if self.pad_to_multiple_of:
            pad = math.ceil(real / self.pad_to_multiple_of) * self.pad_to_multiple_of - real
            # Padding is a sequence of its own (positions restart), so no real token attends to it.
            ids += [self.pad_token_id] * pad
            positions += range(pad)
            segments += [-1] * pad
            labels += [IGNORE_INDEX] * pad
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "segment_ids": torch.tensor([segments], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "index": torch.as_tensor([int(ex.get("index", -1)) for ex in examples], dtype=torch.long),
            "padding_fraction": torch.tensor(1.0 - real / len(ids)),
        }
        for column in REFERENCE_COLUMNS:
            if column in examples[0]:
                batch[column] = torch.as_tensor([float(ex[column]) for ex in examples], dtype=torch.float32)
        return batch


def target_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(R, L-1): whether token ``t + 1`` is a target predicted at ``t`` (same real sequence)."""
    return (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] >= 0)


def packed_target_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunked: bool = False,
                        chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs ``(M,)`` fp32 of the M in-sequence targets of a packed batch, and ``valid`` (R, L-1)."""
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    valid = target_mask(batch["segment_ids"])  # (R, L-1)
    targets = input_ids[:, 1:][valid]  # (M,)
    if chunked:
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False,
                    output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][:, :-1][valid]  # (M, H)
        return _chunked_target_logps(model.get_output_embeddings(), hidden, targets, chunk_size), valid
    logits = model(input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False).logits
    shifted = torch.full_like(input_ids, IGNORE_INDEX)  # (R, L): target of position t is at t
    shifted[:, :-1] = input_ids[:, 1:].masked_fill(~valid, IGNORE_INDEX)
    nll = F.cross_entropy(logits.float().flatten(0, 1), shifted.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none")  # (R*L,): no [M, V] copy of the logits
    return -nll.view(shifted.shape)[:, :-1][valid], valid


def packed_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                   nll_span: NllSpan = NllSpan.PROMPT_AND_RESPONSE, chunked: bool = False,
                   chunk_size: int = 1024) -> PairLogps:
    """``orpo.logps.concatenated_forward`` for a packed batch: per-sequence sums by segment id."""
    logps, valid = packed_target_logps(model, batch, chunked, chunk_size)  # (M,)
    n_pairs = batch["index"].shape[0]
    segments = batch["segment_ids"][:, 1:][valid]  # (M,) in [0, 2B)
    response = (batch["labels"][:, 1:][valid] != IGNORE_INDEX).to(logps.dtype)  # (M,)

    def per_sequence(values: torch.Tensor) -> torch.Tensor:  # (M,) -> (2B,)
        return values.new_zeros(2 * n_pairs).index_add(0, segments, values)

    response_sum, response_count = per_sequence(logps * response), per_sequence(response)
    if NllSpan(nll_span) is NllSpan.RESPONSE:
        nll_sum, nll_count = response_sum[:n_pairs], response_count[:n_pairs]
    else:
        nll_sum, nll_count = per_sequence(logps)[:n_pairs], per_sequence(torch.ones_like(logps))[:n_pairs]
    return PairLogps(
        chosen=SequenceStats(response_sum[:n_pairs], response_count[:n_pairs]),
        rejected=SequenceStats(response_sum[n_pairs:], response_count[n_pairs:]),
        chosen_nll=SequenceStats(-nll_sum, nll_count),
    )


def packed_counts(batch: dict[str, torch.Tensor], nll_span: NllSpan) -> tuple[int, torch.Tensor]:
    """(pairs, NLL tokens of the chosen sequences) of a packed batch, as ``orpo.objective.batch_counts``."""
    n_pairs = batch["index"].shape[0]
    valid = target_mask(batch["segment_ids"])
    chosen = valid & (batch["segment_ids"][:, 1:] < n_pairs)
    if NllSpan(nll_span) is NllSpan.RESPONSE:
        chosen &= batch["labels"][:, 1:] != IGNORE_INDEX
    return n_pairs, chosen.sum()


def real_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Non-padding tokens of a packed or a padded batch (0-d tensor, no host sync)."""
    if is_packed(batch):
        return (batch["segment_ids"] >= 0).sum()
    return batch["attention_mask"].sum()


# ---------------------------------------------------------------------------------------------
# Does this model's attention honour packing? One tiny forward, packed against separate.
# ---------------------------------------------------------------------------------------------

# Bound on |packed - separate| logits relative to max |logits| for an exact implementation:
# fp32 sits at ~1e-6, bf16 at ~1e-2; attention leaking into a preceding sequence moves the
# logits by a large fraction of their scale (the check's first sequence is long and unlike the
# second, and its tokens are given a large share of the attention by repeating them).
EXACT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
LOW_PRECISION_TOLERANCE = 5e-2


@torch.no_grad()
def packing_error(model: torch.nn.Module) -> float:
    """max |logits(packed row) - logits(each sequence alone)| / max |logits|, on two short sequences.

    Runs in eval mode (no dropout). Under ZeRO-3 pass the DeepSpeed engine; every rank calls it
    (a collective), with the same shapes.
    """
    lm_head = model.get_output_embeddings()
    device = lm_head.weight.device
    vocab = int(getattr(_unwrap(model).config, "vocab_size", 0) or lm_head.weight.shape[0])
    first = (torch.arange(24, device=device) * 7919 + 11) % vocab  # (24,)
    second = (torch.arange(9, device=device) * 104729 + 5) % vocab  # (9,)
    was_training = model.training
    model.eval()
    try:
        alone = [model(input_ids=seq[None], use_cache=False).logits.float()[0] for seq in (first, second)]
        ids = torch.cat([first, second])[None]  # (1, 33)
        positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))]).to(device)[None]
        packed = model(input_ids=ids, position_ids=positions, attention_mask=None, use_cache=False).logits.float()[0]
    finally:
        model.train(was_training)
    expected = torch.cat(alone)
    return float((packed - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


def packing_tolerance(model: torch.nn.Module) -> float:
    dtype = _unwrap(model).get_output_embeddings().weight.dtype
    return EXACT_TOLERANCE.get(dtype, LOW_PRECISION_TOLERANCE)


def use_packing(model: torch.nn.Module, mode: PackingMode) -> bool:
    """Resolve ``loop.packing``: ``auto`` packs on GPUs where ``packing_error`` shows the model's
    attention stays inside each sequence; ``True`` packs on any device and raises where attention
    would leak; ``False`` never packs.

    ``auto`` pads on CPU: there the packed step measured slower than the padded one (0.84x its
    tokens/s in ``bench/step_throughput.py`` section 6: the chunked LM head already skips padding,
    and the per-sequence attention has overheads of its own)."""
    if mode is False:
        return False
    if mode not in (True, "auto"):
        raise ValueError(f"loop.packing must be auto, true or false, got {mode!r}")
    if mode == "auto" and _unwrap(model).get_output_embeddings().weight.device.type != "cuda":
        return False
    config = getattr(_unwrap(model), "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa":
        _register_varlen_sdpa()
        config._attn_implementation = VARLEN_SDPA
        if packing_error(model) <= packing_tolerance(model):
            return True
        config._attn_implementation = "sdpa"  # the model's sdpa attention is not the standard one
    error, tolerance = packing_error(model), packing_tolerance(model)
    if error <= tolerance:
        return True
    if mode is True:
        implementation = getattr(config, "_attn_implementation", None)
        raise ValueError(
            f"loop.packing=true is not supported for {type(_unwrap(model)).__name__} with "
            f"attn_implementation={implementation!r}: its attention crosses sequence boundaries in a "
            f"packed row (logits differ from separate sequences by {error:.2e} of their scale, more than "
            f"{tolerance:.0e}); its attention does not derive packed-sequence masks from position_ids. "
            "Use loop.packing=auto or false (padded batches), or an attention implementation that "
            "honours packing (sdpa, eager, flex_attention, flash_attention_2)")
    return False
