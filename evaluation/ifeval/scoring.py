"""Scoring one IFEval response: strict and loose verdicts per instruction, and per prompt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from evaluation.ifeval.instructions import Checker
from evaluation.ifeval.registry import build_checker
from evaluation.ifeval.util import PunktUnavailableError

MissingPunktPolicy = Literal["raise", "exclude"]


def loose_variants(response: str) -> list[str]:
    """The eight responses the official loose mode tries, in its order.

    As-is, without `*`, and without the first line, the last line or both
    (each also without `*`): forgives a "Sure, here it is:" preamble, a
    trailing remark, and markdown emphasis.
    """
    lines = response.split("\n")
    without_first = "\n".join(lines[1:]).strip()
    without_last = "\n".join(lines[:-1]).strip()
    without_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        without_first,
        without_last,
        without_both,
        without_first.replace("*", ""),
        without_last.replace("*", ""),
        without_both.replace("*", ""),
    ]


def _follows(checker: Checker, response: str) -> bool:
    # A blank response follows nothing, whatever the checker would say (a blank
    # answer trivially has "no commas"), as in the official scorer.
    return bool(response.strip()) and checker.check(response)


def _follows_any(checker: Checker, candidates: list[str]) -> bool:
    return any(_follows(checker, candidate) for candidate in candidates)


def build_checkers(record: Mapping[str, Any]) -> list[Checker]:
    """One checker per entry of `record["instruction_id_list"]`, from the matching `kwargs`."""
    instruction_ids = record["instruction_id_list"]
    kwargs_list = record["kwargs"]
    if len(instruction_ids) != len(kwargs_list):
        raise ValueError(
            f"record {record.get('key')!r} has {len(instruction_ids)} instructions but "
            f"{len(kwargs_list)} kwargs entries"
        )
    return [
        build_checker(instruction_id, kwargs)
        for instruction_id, kwargs in zip(instruction_ids, kwargs_list)
    ]


def check(record: Mapping[str, Any], response: str, loose: bool = False) -> list[bool]:
    """Whether `response` follows each instruction of `record` (one line of input_data.jsonl).

    Raises PunktUnavailableError for a sentence-aware instruction when NLTK's
    Punkt model is missing; `score(..., on_missing_punkt="exclude")` can skip those.
    """
    candidates = loose_variants(response) if loose else [response]
    return [_follows_any(checker, candidates) for checker in build_checkers(record)]


def score(
    record: Mapping[str, Any],
    response: str,
    *,
    on_missing_punkt: MissingPunktPolicy = "raise",
) -> dict[str, Any]:
    """Strict and loose verdicts for one response, ready for `aggregate`.

    on_missing_punkt: when an instruction needs NLTK's Punkt model and it is
      not installed, "raise" (the default) raises PunktUnavailableError;
      "exclude" records that instruction as unscorable (verdict None, listed
      under "unscorable") and the prompt-level verdicts as None, because
      whether all instructions were followed is then unknown.

    Returns {"key", "instruction_id_list", "inst_level_strict", "inst_level_loose"
    (lists of bool, or None where unscorable), "prompt_level_strict",
    "prompt_level_loose" (bool or None), "unscorable" (instruction ids)}.
    """
    if on_missing_punkt not in ("raise", "exclude"):
        raise ValueError(f"on_missing_punkt must be 'raise' or 'exclude', got {on_missing_punkt!r}")
    candidates = loose_variants(response)
    strict_verdicts: list[bool | None] = []
    loose_verdicts: list[bool | None] = []
    unscorable: list[str] = []
    for instruction_id, checker in zip(record["instruction_id_list"], build_checkers(record)):
        try:
            strict_verdict = _follows(checker, response)
            loose_verdict = _follows_any(checker, candidates)
        except PunktUnavailableError:
            if on_missing_punkt == "raise":
                raise
            strict_verdict = loose_verdict = None
            unscorable.append(instruction_id)
        strict_verdicts.append(strict_verdict)
        loose_verdicts.append(loose_verdict)
    # Judging the prompt by its other instructions would only drop the prompts
    # that followed them, biasing prompt-level accuracy down; so none is judged.
    prompt_is_scorable = not unscorable
    return {
        "key": record.get("key"),
        "instruction_id_list": list(record["instruction_id_list"]),
        "inst_level_strict": strict_verdicts,
        "inst_level_loose": loose_verdicts,
        "prompt_level_strict": all(strict_verdicts) if prompt_is_scorable else None,
        "prompt_level_loose": all(loose_verdicts) if prompt_is_scorable else None,
        "unscorable": unscorable,
    }
