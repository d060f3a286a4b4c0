"""Aggregating per-response IFEval scores into the four metrics and per-category/instruction tables."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from evaluation.ifeval.registry import category


def _mean(verdicts: list[bool]) -> float | None:
    # None, not 0.0, when nothing could be scored: "no data" is not "all failed".
    return sum(verdicts) / len(verdicts) if verdicts else None


def _instruction_table(
    strict: Mapping[str, list[bool]], loose: Mapping[str, list[bool]]
) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "inst_level_strict_acc": _mean(strict[name]),
            "inst_level_loose_acc": _mean(loose[name]),
            "num_instructions": len(strict[name]),
        }
        for name in sorted(strict)
    }


def aggregate(scores: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The four IFEval metrics plus breakdowns, from `score(...)` results.

    Prompt-level accuracy is the mean over prompts of "all instructions
    followed" (lm_eval's `mean`); instruction-level accuracy pools every
    instruction of every prompt (lm_eval's `agg_inst_level_acc`). Unscorable
    instructions (see `score(on_missing_punkt="exclude")`) are left out of
    both, and their prompts out of the prompt-level metrics; the counts say
    how many, so a reader sees what the metrics cover.
    """
    scores = list(scores)
    if not scores:
        raise ValueError("aggregate() needs at least one score")

    prompt_strict = [
        s["prompt_level_strict"] for s in scores if s["prompt_level_strict"] is not None
    ]
    prompt_loose = [s["prompt_level_loose"] for s in scores if s["prompt_level_loose"] is not None]

    all_strict: list[bool] = []
    all_loose: list[bool] = []
    strict_by_instruction: dict[str, list[bool]] = defaultdict(list)
    loose_by_instruction: dict[str, list[bool]] = defaultdict(list)
    strict_by_category: dict[str, list[bool]] = defaultdict(list)
    loose_by_category: dict[str, list[bool]] = defaultdict(list)
    unscorable_by_instruction: Counter[str] = Counter()
    for s in scores:
        for instruction_id, strict, loose in zip(
            s["instruction_id_list"], s["inst_level_strict"], s["inst_level_loose"]
        ):
            if strict is None or loose is None:
                unscorable_by_instruction[instruction_id] += 1
                continue
            all_strict.append(strict)
            all_loose.append(loose)
            strict_by_instruction[instruction_id].append(strict)
            loose_by_instruction[instruction_id].append(loose)
            strict_by_category[category(instruction_id)].append(strict)
            loose_by_category[category(instruction_id)].append(loose)

    return {
        "prompt_level_strict_acc": _mean(prompt_strict),
        "inst_level_strict_acc": _mean(all_strict),
        "prompt_level_loose_acc": _mean(prompt_loose),
        "inst_level_loose_acc": _mean(all_loose),
        "per_category": _instruction_table(strict_by_category, loose_by_category),
        "per_instruction": _instruction_table(strict_by_instruction, loose_by_instruction),
        "num_prompts": len(scores),
        "num_prompts_scored": len(prompt_strict),
        "num_instructions": len(all_strict) + sum(unscorable_by_instruction.values()),
        "num_instructions_scored": len(all_strict),
        "num_unscorable_instructions": sum(unscorable_by_instruction.values()),
        "unscorable_by_instruction": dict(sorted(unscorable_by_instruction.items())),
    }
