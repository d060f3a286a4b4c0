"""Shared bench helpers: peak-RSS measurement, long/varied-length preference data, padding waste."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from orpo.chat import render_conversation, render_prompt
from orpo.collate import PreferenceCollator
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
        mask = collator([examples[i] for i in idx])["attention_mask"]  # (2B, T)
        pad += int(mask.numel() - mask.sum())
        total += mask.numel()
    return pad / total


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
