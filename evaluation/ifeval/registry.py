"""Instruction id -> checker class, and building a checker from one record's kwargs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from evaluation.ifeval import instructions
from evaluation.ifeval.instructions import Checker

# The 25 instructions of the official `instructions_registry.INSTRUCTION_DICT`.
INSTRUCTION_CHECKERS: dict[str, type] = {
    "keywords:existence": instructions.KeywordExistence,
    "keywords:frequency": instructions.KeywordFrequency,
    "keywords:forbidden_words": instructions.ForbiddenWords,
    "keywords:letter_frequency": instructions.LetterFrequency,
    "language:response_language": instructions.ResponseLanguage,
    "length_constraints:number_sentences": instructions.NumberOfSentences,
    "length_constraints:number_paragraphs": instructions.NumberOfParagraphs,
    "length_constraints:number_words": instructions.NumberOfWords,
    "length_constraints:nth_paragraph_first_word": instructions.NthParagraphFirstWord,
    "detectable_content:number_placeholders": instructions.NumberOfPlaceholders,
    "detectable_content:postscript": instructions.Postscript,
    "detectable_format:number_bullet_lists": instructions.NumberOfBulletLists,
    "detectable_format:constrained_response": instructions.ConstrainedResponse,
    "detectable_format:number_highlighted_sections": instructions.NumberOfHighlightedSections,
    "detectable_format:multiple_sections": instructions.MultipleSections,
    "detectable_format:json_format": instructions.JsonFormat,
    "detectable_format:title": instructions.Title,
    "combination:two_responses": instructions.TwoResponses,
    "combination:repeat_prompt": instructions.RepeatPrompt,
    "startend:end_checker": instructions.EndPhrase,
    "startend:quotation": instructions.Quotation,
    "change_case:capital_word_frequency": instructions.CapitalWordFrequency,
    "change_case:english_capital": instructions.EnglishCapital,
    "change_case:english_lowercase": instructions.EnglishLowercase,
    "punctuation:no_comma": instructions.NoComma,
}

# Instructions whose official checker needs NLTK's Punkt model.
PUNKT_INSTRUCTIONS = frozenset(
    {"length_constraints:number_sentences", "change_case:capital_word_frequency"}
)


class InstructionKwargsError(ValueError):
    """An instruction's kwargs are missing, unknown or invalid; the message names both."""


class UnknownInstructionError(ValueError):
    """An instruction id that is not one of the 25 in `INSTRUCTION_CHECKERS`."""


def category(instruction_id: str) -> str:
    """The group an instruction belongs to: "length_constraints" for
    "length_constraints:number_words"."""
    return instruction_id.split(":", 1)[0]


def checker_kwargs(instruction_id: str) -> tuple[str, ...]:
    """The kwargs an instruction takes, all required."""
    return tuple(field.name for field in dataclasses.fields(_checker_class(instruction_id)))


def build_checker(instruction_id: str, kwargs: Mapping[str, object] | None) -> Checker:
    """The checker for `instruction_id`, built from one entry of a record's `kwargs` list.

    None values are dropped first: the official data lists every kwarg of the
    schema with None for those an instruction does not use.
    """
    checker_class = _checker_class(instruction_id)
    given = {name: value for name, value in (kwargs or {}).items() if value is not None}
    expected = checker_kwargs(instruction_id)
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise InstructionKwargsError(
            f"{instruction_id}: unknown kwarg(s) {unknown}; it takes {list(expected)}"
        )
    missing = [name for name in expected if name not in given]
    if missing:
        raise InstructionKwargsError(
            f"{instruction_id}: missing required kwarg(s) {missing} (got {given}); "
            "the official checker would pick random values, we refuse to"
        )
    try:
        return checker_class(**given)
    except ValueError as invalid:
        raise InstructionKwargsError(f"{instruction_id}: {invalid}") from invalid


def _checker_class(instruction_id: str) -> type:
    try:
        return INSTRUCTION_CHECKERS[instruction_id]
    except KeyError:
        raise UnknownInstructionError(
            f"unknown IFEval instruction {instruction_id!r}; known: {sorted(INSTRUCTION_CHECKERS)}"
        ) from None
