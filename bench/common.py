"""Shared bench helpers: peak-RSS measurement, long/varied-length preference data, padding waste."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from orpo.chat import render_conversation, render_prompt
from orpo.collate import PreferenceCollator
from orpo.packing import real_tokens as real_tokens_of
from orpo.synthetic import make_preference_records

MiB = 1024 * 1024

# ---------------------------------------------------------------------------------------------
# Memory: resident set size of this process, read from /proc (all CPU tensors live in it).
# ---------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    """Current resident set size (VmRSS)."""
    return _status_kib("VmRSS") * 1024


class PeakRss:
    """Peak RSS from ``start()`` on: the kernel's high-water mark (VmHWM), reset by ``clear_refs``.

    Writing ``5`` to ``/proc/self/clear_refs`` resets VmHWM to the current RSS (Linux ≥ 4.0), so
    the peak is exact and free. Where that write is refused, a thread samples RSS every
    millisecond instead (it can miss a peak shorter than that).
    """

    def __init__(self) -> None:
        self.baseline = 0
        self._sampled_peak = 0
        self._stop: threading.Event | None = None
        self.method = "VmHWM after clear_refs"

    def start(self) -> None:
        self.baseline = rss_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "RSS sampled every 1 ms"
            self._sampled_peak, self._stop = self.baseline, threading.Event()
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        assert self._stop is not None
        while not self._stop.wait(0.001):
            self._sampled_peak = max(self._sampled_peak, rss_bytes())

    def peak(self) -> int:
        if self._stop is not None:
            return max(self._sampled_peak, rss_bytes())
        return _status_kib("VmHWM") * 1024

    def stop(self) -> dict[str, Any]:
        """Baseline, peak and their difference, in MiB."""
        peak = self.peak()
        if self._stop is not None:
            self._stop.set()
        return {"baseline_mib": self.baseline / MiB, "peak_mib": peak / MiB,
                "peak_delta_mib": (peak - self.baseline) / MiB, "memory_method": self.method}


# ---------------------------------------------------------------------------------------------
# Data: the synthetic prompts with responses of a chosen token length.
# ---------------------------------------------------------------------------------------------


def _text_of_length(tokenizer: Any, pool: Sequence[str], n_tokens: int, rng: random.Random) -> str:
    """Synthetic sentences cut to about ``n_tokens`` tokens (decode/re-encode may shift it by one)."""
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += tokenizer(" " + rng.choice(pool), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[:n_tokens]).strip()


def varied_length_records(n: int, tokenizer: Any, min_tokens: int, max_tokens: int,
                          seed: int) -> list[dict[str, str]]:
    """``n`` records with the synthetic prompts; each response's length is drawn independently,
    uniformly in ``[min_tokens, max_tokens]`` tokens (chosen and rejected differ, as in real data)."""
    rng = random.Random(seed)
    base = make_preference_records(n, seed)
    pool = [r["chosen"] for r in base] + [r["rejected"] for r in base]
    return [{"prompt": r["prompt"],
             "chosen": _text_of_length(tokenizer, pool, rng.randint(min_tokens, max_tokens), rng),
             "rejected": _text_of_length(tokenizer, pool, rng.randint(min_tokens, max_tokens), rng)}
            for r in base]


# Long-tailed lengths modelled on UltraFeedback (HuggingFaceH4/ultrafeedback_binarized, train_prefs),
# in tokens: lognormal, the usual model for text lengths (a product of many small independent
# factors; a heavy right tail, no negative values). Parameters (median, sigma), matched to the
# dataset's shape as published rather than fitted to its rows (no hub access here): prompts have
# a median of ~80 tokens but a mean of ~160 (ShareGPT/Evol-Instruct prompts with pasted text make
# a long tail: sigma = sqrt(2 ln(mean/median)) = 1.18); responses a median of ~260 and a mean of
# ~320 (sigma 0.64), chosen and rejected drawn independently. 4 prompt + 2 chosen + 1 rejected
# texts per row (prompt, chosen and rejected conversations, messages) at these means is ~1.6k
# tokens, ~6.5 kB at ~4 bytes/token: the card's 405.7 MB / 61,135 rows = 6.6 kB per row.
# Real runs truncate at max_length 1024 / max_prompt_length 512 (the ORPO/Zephyr recipes).
ULTRAFEEDBACK_PROMPT = (80.0, 1.18)
ULTRAFEEDBACK_RESPONSE = (260.0, 0.64)


def _lognormal_tokens(rng: random.Random, median: float, sigma: float, low: int = 4, high: int = 4000) -> int:
    return int(min(max(round(rng.lognormvariate(math.log(median), sigma)), low), high))


# Chat-template tokens around a prompt and a response (role headers, BOS, EOS), with room to spare.
TEMPLATE_MARGIN = 8


def ultrafeedback_like_records(n: int, tokenizer: Any, seed: int, max_length: int,
                               max_prompt_length: int) -> list[dict[str, str]]:
    """``n`` records whose prompt and response token lengths follow ``ULTRAFEEDBACK_*`` (lognormal).

    Lengths are cut as a run truncates them (prompt to ``max_prompt_length``, responses to what
    ``max_length`` leaves), but in the text, before tokenization: our truncation and TRL's differ
    (it keeps the prompt's end without BOS and cuts responses to ``max_length - max_prompt_length``),
    and the comparison needs both to train on the same token ids.
    """
    rng = random.Random(seed)
    base = make_preference_records(n, seed)
    pool = [r["chosen"] for r in base] + [r["rejected"] for r in base] + [r["prompt"] for r in base]
    records = []
    for _ in base:
        prompt = min(_lognormal_tokens(rng, *ULTRAFEEDBACK_PROMPT), max_prompt_length - TEMPLATE_MARGIN)
        room = max_length - prompt - 2 * TEMPLATE_MARGIN
        records.append({key: _text_of_length(tokenizer, pool, length, rng) for key, length in (
            ("prompt", prompt), ("chosen", min(_lognormal_tokens(rng, *ULTRAFEEDBACK_RESPONSE), room)),
            ("rejected", min(_lognormal_tokens(rng, *ULTRAFEEDBACK_RESPONSE), room)))})
    return records


def trl_strings(record: dict[str, str], tokenizer: Any) -> dict[str, str]:
    """The record as TRL's ORPOTrainer takes it: rendered prompt text and response texts.

    Responses are cut right after EOS, as ``orpo.data`` cuts them, so TRL's tokenization
    yields the same ids as ours (the TRL worker checks this).
    """
    prompt = [{"role": "user", "content": record["prompt"]}]
    prompt_text = render_prompt(tokenizer, prompt)
    out = {"prompt": prompt_text}
    for key in ("chosen", "rejected"):
        full = render_conversation(tokenizer, prompt + [{"role": "assistant", "content": record[key]}])
        response = full[len(prompt_text):]
        out[key] = response[: response.rindex(tokenizer.eos_token) + len(tokenizer.eos_token)]
    return out


def real_tokens(example: dict[str, Any]) -> int:
    """Non-padding tokens of a pair: prompt + chosen and prompt + rejected."""
    return 2 * len(example["prompt_ids"]) + len(example["chosen_ids"]) + len(example["rejected_ids"])


def padding_waste(examples: Sequence[dict[str, Any]], batches: Sequence[Sequence[int]],
                  collator: PreferenceCollator) -> float:
    """Pad positions / all positions over the collated batches (a token-weighted aggregate)."""
    pad = total = 0
    for idx in batches:
        batch = collator([examples[i] for i in idx])  # padded (2B, T) or packed (1, L)
        real = int(real_tokens_of(batch))
        pad += batch["input_ids"].numel() - real
        total += batch["input_ids"].numel()
    return pad / total


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
