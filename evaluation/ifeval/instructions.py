"""The 25 IFEval instruction checkers, each a small class built from explicit kwargs.

Each `check(response)` reproduces the official google-research checker as
vendored in lm_eval 0.4.13 (`lm_eval/tasks/ifeval/instructions.py`), quirks
included: keywords are regular expressions, words are `\\w+` runs, and so on.
What differs is construction: the official `build_description` draws a random
value for a missing or out-of-range kwarg; here it is an error, raised by
`registry.build_checker` with the instruction id in the message (except for
`LetterFrequency`, which counts a non-letter character instead of replacing it).
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass
from typing import Protocol

from evaluation.ifeval.util import (
    LANGUAGE_CODES,
    RELATIONS,
    compare,
    count_sentences,
    count_words,
    detect_language,
    word_tokenize,
)


class Checker(Protocol):
    """What every checker does: judge one response against one instruction."""

    def check(self, response: str) -> bool: ...


# --- argument validation; messages name the kwarg, registry adds the instruction ---


def _require_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _require_relation(name: str, value: object) -> None:
    if value not in RELATIONS:
        raise ValueError(f"{name} must be one of {RELATIONS}, got {value!r}")


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _require_words(name: str, value: object) -> None:
    words_ok = isinstance(value, (list, tuple)) and all(isinstance(w, str) and w for w in value)
    if not value or not words_ok:
        raise ValueError(f"{name} must be a non-empty list of non-empty strings, got {value!r}")


# --- keywords: ---


@dataclass
class KeywordExistence:
    """keywords:existence: every keyword occurs, case-insensitively (keywords are regexes)."""

    keywords: list[str]

    def __post_init__(self):
        _require_words("keywords", self.keywords)

    def check(self, response: str) -> bool:
        return all(re.search(keyword, response, flags=re.IGNORECASE) for keyword in self.keywords)


@dataclass
class KeywordFrequency:
    """keywords:frequency: case-insensitive regex matches of `keyword` compared with `frequency`."""

    keyword: str
    frequency: int
    relation: str

    def __post_init__(self):
        _require_text("keyword", self.keyword)
        _require_count("frequency", self.frequency)
        _require_relation("relation", self.relation)
        self.keyword = self.keyword.strip()

    def check(self, response: str) -> bool:
        # Substring matches count: "cat" is found in "category", as in the official checker.
        occurrences = len(re.findall(self.keyword, response, flags=re.IGNORECASE))
        return compare(occurrences, self.relation, self.frequency)


@dataclass
class ForbiddenWords:
    """keywords:forbidden_words: no forbidden word occurs as a whole word, case-insensitively."""

    forbidden_words: list[str]

    def __post_init__(self):
        _require_words("forbidden_words", self.forbidden_words)
        self.forbidden_words = sorted(set(self.forbidden_words))

    def check(self, response: str) -> bool:
        return not any(
            re.search(r"\b" + word + r"\b", response, flags=re.IGNORECASE)
            for word in self.forbidden_words
        )


@dataclass
class LetterFrequency:
    """keywords:letter_frequency: occurrences of one character, case-insensitively, vs. a count.

    Two official prompts ask for '#' and '!'; the official checker swaps any
    non-ASCII-letter for a random letter. We count the character asked for.
    """

    letter: str
    let_frequency: int
    let_relation: str

    def __post_init__(self):
        if not isinstance(self.letter, str) or len(self.letter) != 1 or self.letter.isspace():
            raise ValueError(f"letter must be one non-space character, got {self.letter!r}")
        _require_count("let_frequency", self.let_frequency)
        _require_relation("let_relation", self.let_relation)
        self.letter = self.letter.lower()

    def check(self, response: str) -> bool:
        occurrences = collections.Counter(response.lower())[self.letter]
        return compare(occurrences, self.let_relation, self.let_frequency)


# --- language: ---


@dataclass
class ResponseLanguage:
    """language:response_language: langdetect's guess equals `language` (undetectable passes)."""

    language: str

    def __post_init__(self):
        if self.language not in LANGUAGE_CODES:
            raise ValueError(
                f"language must be one of the codes {sorted(LANGUAGE_CODES)}, got {self.language!r}"
            )

    def check(self, response: str) -> bool:
        detected = detect_language(response)
        # The official checker counts text langdetect cannot classify as followed.
        return detected is None or detected == self.language


# --- length_constraints: ---


@dataclass
class NumberOfSentences:
    """length_constraints:number_sentences: Punkt sentence count vs. `num_sentences`."""

    num_sentences: int
    relation: str

    def __post_init__(self):
        _require_count("num_sentences", self.num_sentences)
        _require_relation("relation", self.relation)

    def check(self, response: str) -> bool:
        sentences = count_sentences(response, needed_by="length_constraints:number_sentences")
        return compare(sentences, self.relation, self.num_sentences)


@dataclass
class NumberOfParagraphs:
    """length_constraints:number_paragraphs: exactly `num_paragraphs` parts between `***` dividers."""

    num_paragraphs: int

    def __post_init__(self):
        _require_count("num_paragraphs", self.num_paragraphs)

    def check(self, response: str) -> bool:
        paragraphs = re.split(r"\s?\*\*\*\s?", response)
        count = len(paragraphs)
        for index, paragraph in enumerate(paragraphs):
            if not paragraph.strip():
                # A divider at either end is tolerated; an empty paragraph inside is not.
                if index == 0 or index == len(paragraphs) - 1:
                    count -= 1
                else:
                    return False
        return count == self.num_paragraphs


@dataclass
class NumberOfWords:
    """length_constraints:number_words: `\\w+` word count vs. `num_words`."""

    num_words: int
    relation: str

    def __post_init__(self):
        _require_count("num_words", self.num_words)
        _require_relation("relation", self.relation)

    def check(self, response: str) -> bool:
        return compare(count_words(response), self.relation, self.num_words)


@dataclass
class NthParagraphFirstWord:
    """length_constraints:nth_paragraph_first_word: `\\n\\n`-separated paragraph count, and the
    first word of paragraph `nth_paragraph` (1-based)."""

    num_paragraphs: int
    nth_paragraph: int
    first_word: str

    def __post_init__(self):
        _require_count("num_paragraphs", self.num_paragraphs)
        _require_count("nth_paragraph", self.nth_paragraph)
        if not 1 <= self.nth_paragraph <= self.num_paragraphs:
            raise ValueError(
                f"nth_paragraph must be in 1..num_paragraphs={self.num_paragraphs}, "
                f"got {self.nth_paragraph!r}"
            )
        _require_text("first_word", self.first_word)
        self.first_word = self.first_word.lower()

    def check(self, response: str) -> bool:
        paragraphs = re.split(r"\n\n", response)
        count = sum(1 for paragraph in paragraphs if paragraph.strip())
        # Official quirk: `nth` indexes the raw split, empty paragraphs included,
        # but is bounded by the count of non-empty ones.
        if self.nth_paragraph > count:
            return False
        paragraph = paragraphs[self.nth_paragraph - 1].strip()
        if not paragraph:
            return False
        word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
        first_word = ""
        for character in word:
            if character in {".", ",", "?", "!", "'", '"'}:
                break
            first_word += character.lower()
        return count == self.num_paragraphs and first_word == self.first_word


# --- detectable_content: ---


@dataclass
class NumberOfPlaceholders:
    """detectable_content:number_placeholders: at least `num_placeholders` `[...]` spans."""

    num_placeholders: int

    def __post_init__(self):
        _require_count("num_placeholders", self.num_placeholders)

    def check(self, response: str) -> bool:
        return len(re.findall(r"\[.*?\]", response)) >= self.num_placeholders


@dataclass
class Postscript:
    """detectable_content:postscript: some line starts (after spaces) with the marker."""

    postscript_marker: str

    def __post_init__(self):
        _require_text("postscript_marker", self.postscript_marker)
        self.postscript_marker = self.postscript_marker.strip()

    def check(self, response: str) -> bool:
        # The two markers in the data get spacing-tolerant patterns; any other
        # marker is used as a (lower-cased) regex, as in the official checker.
        if self.postscript_marker == "P.P.S":
            pattern = r"\s*p\.\s?p\.\s?s.*$"
        elif self.postscript_marker == "P.S.":
            pattern = r"\s*p\.\s?s\..*$"
        else:
            pattern = r"\s*" + self.postscript_marker.lower() + r".*$"
        return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


# --- detectable_format: ---


@dataclass
class NumberOfBulletLists:
    """detectable_format:number_bullet_lists: exactly `num_bullets` lines starting with `*` or `-`."""

    num_bullets: int

    def __post_init__(self):
        _require_count("num_bullets", self.num_bullets)

    def check(self, response: str) -> bool:
        # `* ` bullets but not `**bold**` lines; any line starting with `-` counts,
        # so a `---` rule does too.
        star_bullets = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
        dash_bullets = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
        return len(star_bullets) + len(dash_bullets) == self.num_bullets


CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


@dataclass
class ConstrainedResponse:
    """detectable_format:constrained_response: contains one of CONSTRAINED_RESPONSE_OPTIONS."""

    def check(self, response: str) -> bool:
        return any(option in response.strip() for option in CONSTRAINED_RESPONSE_OPTIONS)


@dataclass
class NumberOfHighlightedSections:
    """detectable_format:number_highlighted_sections: at least `num_highlights` `*...*` spans."""

    num_highlights: int

    def __post_init__(self):
        _require_count("num_highlights", self.num_highlights)

    def check(self, response: str) -> bool:
        # lm_eval 0.4.13 counts `**bold**` spans in addition to the `*...*`
        # matches (the Google original counts only the latter).
        single = re.findall(r"\*[^\n\*]*\*", response)
        double = re.findall(r"\*\*[^\n\*]*\*\*", response)
        count = sum(1 for highlight in single if highlight.strip("*").strip())
        count += sum(
            1 for highlight in double if highlight.removeprefix("**").removesuffix("**").strip()
        )
        return count >= self.num_highlights


@dataclass
class MultipleSections:
    """detectable_format:multiple_sections: at least `num_sections` "<splitter> <number>" markers."""

    section_spliter: str  # sic: the official kwarg name
    num_sections: int

    def __post_init__(self):
        _require_text("section_spliter", self.section_spliter)
        _require_count("num_sections", self.num_sections)
        self.section_spliter = self.section_spliter.strip()

    def check(self, response: str) -> bool:
        # Case-sensitive: "SECTION 1" does not mark a section when the splitter is "Section".
        pattern = r"\s?" + self.section_spliter + r"\s?\d+\s?"
        return len(re.split(pattern, response)) - 1 >= self.num_sections


@dataclass
class JsonFormat:
    """detectable_format:json_format: the response, minus one ``` fence pair, parses as JSON."""

    def check(self, response: str) -> bool:
        payload = (
            response.strip()
            .removeprefix("```json")
            .removeprefix("```Json")
            .removeprefix("```JSON")
            .removeprefix("```")
            .removesuffix("```")
            .strip()
        )
        try:
            json.loads(payload)
        except ValueError:
            return False
        return True


@dataclass
class Title:
    """detectable_format:title: a non-blank `<<title>>` on one line."""

    def check(self, response: str) -> bool:
        titles = re.findall(r"<<[^\n]+>>", response)
        return any(title.lstrip("<").rstrip(">").strip() for title in titles)


# --- combination: ---


@dataclass
class TwoResponses:
    """combination:two_responses: exactly two different non-empty parts around `******`."""

    def check(self, response: str) -> bool:
        parts = response.split("******")
        answers = []
        for index, part in enumerate(parts):
            if part.strip():
                answers.append(part)
            elif index not in (0, len(parts) - 1):
                return False
        return len(answers) == 2 and answers[0].strip() != answers[1].strip()


@dataclass
class RepeatPrompt:
    """combination:repeat_prompt: starts with `prompt_to_repeat`, case-insensitively."""

    prompt_to_repeat: str

    def __post_init__(self):
        _require_text("prompt_to_repeat", self.prompt_to_repeat)

    def check(self, response: str) -> bool:
        return response.strip().lower().startswith(self.prompt_to_repeat.strip().lower())


# --- startend: ---


@dataclass
class EndPhrase:
    """startend:end_checker: ends with `end_phrase`, case-insensitively, outer `"` ignored."""

    end_phrase: str

    def __post_init__(self):
        _require_text("end_phrase", self.end_phrase)
        self.end_phrase = self.end_phrase.strip()

    def check(self, response: str) -> bool:
        return response.strip().strip('"').lower().endswith(self.end_phrase.lower())


@dataclass
class Quotation:
    """startend:quotation: the stripped response starts and ends with `"`."""

    def check(self, response: str) -> bool:
        response = response.strip()
        return len(response) > 1 and response[0] == '"' and response[-1] == '"'


# --- change_case: ---


@dataclass
class CapitalWordFrequency:
    """change_case:capital_word_frequency: `nltk.word_tokenize` tokens that are upper-case vs.
    `capital_frequency`."""

    capital_frequency: int
    capital_relation: str

    def __post_init__(self):
        _require_count("capital_frequency", self.capital_frequency)
        _require_relation("capital_relation", self.capital_relation)

    def check(self, response: str) -> bool:
        words = word_tokenize(response, needed_by="change_case:capital_word_frequency")
        capital_words = sum(1 for word in words if word.isupper())
        return compare(capital_words, self.capital_relation, self.capital_frequency)


def _is_english(response: str) -> bool:
    # Text langdetect cannot classify counts as English, as in the official checkers.
    detected = detect_language(response)
    return detected is None or detected == "en"


@dataclass
class EnglishCapital:
    """change_case:english_capital: `str.isupper()` and detected as English."""

    def check(self, response: str) -> bool:
        return response.isupper() and _is_english(response)


@dataclass
class EnglishLowercase:
    """change_case:english_lowercase: `str.islower()` and detected as English."""

    def check(self, response: str) -> bool:
        return response.islower() and _is_english(response)


# --- punctuation: ---


@dataclass
class NoComma:
    """punctuation:no_comma: no ASCII comma (full-width "，" is allowed)."""

    def check(self, response: str) -> bool:
        return "," not in response
