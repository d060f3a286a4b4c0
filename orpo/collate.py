"""Tokenized pairs to padded tensors, and length-grouped batching that keeps padding low.

A collated batch of B pairs has chosen sequences in rows ``[:B]`` and rejected ones in rows
``[B:]``, right-padded to the longest sequence of the batch (optionally rounded up to a
multiple of 8 for tensor cores), so one forward scores both.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from orpo.logps import IGNORE_INDEX

# Optional per-example columns passed through as fp32 tensors (precomputed DPO references).
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class PreferenceCollator:
    """Collate ``orpo.data.tokenize_pair`` examples into one concatenated chosen+rejected batch.

    Output tensors: ``input_ids``, ``attention_mask``, ``labels`` of shape (2B, T), with the
    prompt and padding of ``labels`` set to ``IGNORE_INDEX``; ``index`` (B,) the source record
    indices; ``padding_fraction`` (a 0-d tensor): padded / total positions of the batch.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [(ex["prompt_ids"], ex["chosen_ids"]) for ex in examples]
        sequences += [(ex["prompt_ids"], ex["rejected_ids"]) for ex in examples]
        longest = max(len(p) + len(r) for p, r in sequences)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), longest), self.pad_token_id, dtype=torch.long)  # (2B, T)
        labels = torch.full((len(sequences), longest), IGNORE_INDEX, dtype=torch.long)  # (2B, T)
        attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)  # (2B, T)
        for row, (prompt, response) in enumerate(sequences):
            ids = torch.as_tensor(list(prompt) + list(response), dtype=torch.long)
            input_ids[row, : len(ids)] = ids
            labels[row, len(prompt) : len(ids)] = ids[len(prompt) :]
            attention_mask[row, : len(ids)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "index": torch.as_tensor([int(ex.get("index", -1)) for ex in examples], dtype=torch.long),
            "padding_fraction": 1.0 - attention_mask.float().mean(),
        }
        for column in REFERENCE_COLUMNS:
            if column in examples[0]:
                batch[column] = torch.as_tensor([float(ex[column]) for ex in examples], dtype=torch.float32)
        return batch


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    megabatch_multiplier: int = 64,
    drop_last: bool = False,
) -> list[list[int]]:
    """Batches of indices whose members have similar lengths, in a seeded random order.

    Shuffle, cut into megabatches of ``batch_size * megabatch_multiplier``, sort each by length
    (longest first) and slice into batches; then shuffle the batches. Larger megabatches mean
    less padding and a less random mix of lengths within an epoch.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    megabatch = batch_size * megabatch_multiplier
    batches: list[list[int]] = []
    for start in range(0, len(order), megabatch):
        group = sorted(order[start : start + megabatch], key=lambda i: -lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    rng.shuffle(batches)
    return batches


def random_batches(n: int, batch_size: int, seed: int, drop_last: bool = False) -> list[list[int]]:
    """Plain shuffled batches (no length grouping)."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) == batch_size] if drop_last else batches
