"""Parity with the official IFEval checkers (lm_eval 0.4.13) on hand-made responses, all 25 types."""

from __future__ import annotations

import dataclasses

import pytest

from evaluation import ifeval
from evaluation.ifeval import instructions, util
from evaluation.ifeval.registry import PUNKT_INSTRUCTIONS, checker_kwargs
from tests.evaluation.ifeval_reference import punkt_skip_reason

pytestmark = pytest.mark.usefixtures("seeded_langdetect")

needs_real_punkt = pytest.mark.skipif(
    not util.punkt_available(),
    reason=punkt_skip_reason("test_punkt_instructions_parity_with_stand_in_model"),
)


def _record(instruction_id, kwargs, prompt="Write something."):
    return {"key": 0, "prompt": prompt, "instruction_id_list": [instruction_id], "kwargs": [kwargs]}


def _official_verdicts(official, record, response):
    """(strict, loose) verdict lists from lm_eval's own scoring functions."""
    _, utils = official
    example = utils.InputExample(**record)
    strict = utils.test_instruction_following_strict(example, response).follow_instruction_list
    loose = utils.test_instruction_following_loose(example, response).follow_instruction_list
    return strict, loose


def _parity_mismatches(official, record, responses):
    """Every (response, mode, ours, official) where the verdicts differ, and all strict verdicts."""
    mismatches, strict_seen, loose_seen = [], set(), set()
    for response in responses:
        official_strict, official_loose = _official_verdicts(official, record, response)
        ours_strict = ifeval.check(record, response)
        ours_loose = ifeval.check(record, response, loose=True)
        if ours_strict != official_strict:
            mismatches.append((response, "strict", ours_strict, official_strict))
        if ours_loose != official_loose:
            mismatches.append((response, "loose", ours_loose, official_loose))
        strict_seen.update(ours_strict)
        loose_seen.update(ours_loose)
    return mismatches, strict_seen, loose_seen


# Responses every instruction sees: blanks, markdown, fenced JSON, *** paragraphs, case.
SHARED_RESPONSES = [
    "",
    "   ",
    "\n",
    "Sure, here it is:\n*Hello* **world**, friend.\nLet me know if you need more!",
    '```json\n{"answer": "yes", "items": [1, 2]}\n```',
    "Para one is here.\n***\nPara two is here.\n***\nPara three is here.",
    "ALL CAPS RESPONSE ABOUT THE WEATHER TODAY.",
    "a lower case response about the weather today.",
    "Line one\nline two, with a comma\nLine three",
]

# instruction id -> [(kwargs, responses)]: passing, failing, and boundary cases.
CASES = {
    "keywords:existence": [
        ({"keywords": ["cat", "dog"]}, ["The Cat and the DOG.", "only a cat", "category dogma"]),
        ({"keywords": ["a.b"]}, ["axb", "ab", "A.B"]),  # keywords are regexes
    ],
    "keywords:frequency": [
        (
            {"keyword": "the", "frequency": 3, "relation": "at least"},
            ["the the the", "The THE the", "the the", "theme then other"],
        ),
        (
            {"keyword": " cat ", "frequency": 2, "relation": "less than"},
            ["cat", "cat cat", "Concatenate", "no felines"],
        ),
    ],
    "keywords:forbidden_words": [
        ({"forbidden_words": ["bad", "evil"]}, ["this is bad", "badly done", "EVIL!", "fine"]),
        ({"forbidden_words": ["New York"]}, ["new york", "New  York", "NewYork", "York"]),
    ],
    "keywords:letter_frequency": [
        (
            {"letter": "a", "let_frequency": 3, "let_relation": "at least"},
            ["aaa", "AaA", "aa", "banana"],
        ),
        (
            {"letter": "Q", "let_frequency": 2, "let_relation": "less than"},
            ["q", "Qq", "qqq", "no such letter"],
        ),
    ],
    "language:response_language": [
        # langdetect calls "Nein danke" German under some seeds only: the seeds must agree.
        (
            {"language": "de"},
            [
                "Das ist ein deutscher Satz über das Wetter in Berlin.",
                "This is an English sentence about the weather.",
                "12345 678",
                "Nein danke",
            ],
        ),
        ({"language": "fr"}, ["Bonjour", "Sol y mar"]),
        ({"language": "hi"}, ["नमस्ते, आप कैसे हैं? मैं ठीक हूँ।", "Bonjour tout le monde"]),
        ({"language": "en"}, ["This is an English sentence about the weather."]),
    ],
    "length_constraints:number_sentences": [
        (
            {"num_sentences": 3, "relation": "at least"},
            ["One. Two. Three.", "One. Two.", "Dr. Smith went home. He slept. Zzz.", "Hi"],
        ),
        (
            {"num_sentences": 2, "relation": "less than"},
            ["Just one sentence.", "e.g. this is it. Yes! No?", "One! Two?"],
        ),
    ],
    "length_constraints:number_paragraphs": [
        (
            {"num_paragraphs": 3},
            [
                "a *** b *** c",
                "a\n***\nb\n***\nc",
                "*** a *** b *** c ***",
                "a *** *** c",
                "a *** b",
                "a **** b *** c",
            ],
        ),
        ({"num_paragraphs": 1}, ["single paragraph", "x ***", "*** ***"]),
    ],
    "length_constraints:number_words": [
        (
            {"num_words": 5, "relation": "at least"},
            ["one two three four five", "one two three four", "don't stop-me now", "a,b,c,d,e"],
        ),
        (
            {"num_words": 5, "relation": "less than"},
            ["héllo wörld 123 _x_", "one two three four five", "... !!! ???"],
        ),
    ],
    "length_constraints:nth_paragraph_first_word": [
        (
            {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "Second"},
            [
                "First para.\n\nSecond para.\n\nThird.",
                'First\n\n"Second," he said.\n\nThird',
                "First\n\nsecond\n\nThird\n\nFourth",
                "\n\nFirst\n\nSecond\n\nThird",
                "First\n\n\n\nSecond\n\nThird",
                "First\n\nSeconds\n\nThird",
            ],
        ),
        (
            {"num_paragraphs": 1, "nth_paragraph": 1, "first_word": "hello"},
            ["Hello world", "'Hello' world", "Hello.World", "Hi hello"],
        ),
    ],
    "detectable_content:number_placeholders": [
        (
            {"num_placeholders": 2},
            ["[name] and [address]", "[name]", "[a][b]", "[ ] [", "[unclosed"],
        ),
    ],
    "detectable_content:postscript": [
        (
            {"postscript_marker": "P.S."},
            ["Body\nP.S. hi", "Body\np. s. hi", "Body\n  p.s. low", "Body P.S.", "No postscript"],
        ),
        ({"postscript_marker": "P.P.S"}, ["Body\nP.P.S hi", "body\n  p.p. s more", "P.S. only"]),
        ({"postscript_marker": "Note:"}, ["Body\nNOTE: x", "Notes"]),
    ],
    "detectable_format:number_bullet_lists": [
        (
            {"num_bullets": 2},
            [
                "* a\n* b",
                "- a\n- b",
                "* a\n- b\n**bold**",
                "* a",
                "* a\n* b\n* c",
                "---\n* a",
                "  * indented\n\t- tabbed",
            ],
        ),
    ],
    "detectable_format:constrained_response": [
        (
            {},
            [
                "My answer is yes.",
                "my answer is yes.",
                "Well... My answer is maybe. Because",
                "My answer is yes",
                "My answer is no.",
            ],
        ),
    ],
    "detectable_format:number_highlighted_sections": [
        (
            {"num_highlights": 2},
            [
                "*one* and *two*",
                "**bold** text",
                "*one*",
                "** ** *x*",
                "*a* **b**",
                "*multi\nline*",
                "***triple***",
            ],
        ),
    ],
    "detectable_format:multiple_sections": [
        (
            {"section_spliter": "Section", "num_sections": 2},
            [
                "Section 1\nfoo\nSection 2\nbar",
                "SECTION 1 a SECTION 2 b",
                "Section 1 only",
                "Section1 a Section2 b",
            ],
        ),
        (
            {"section_spliter": " SECTION ", "num_sections": 3},
            ["SECTION 1 a SECTION 2 b SECTION 3 c", "SECTION 1 a SECTION 2 b"],
        ),
    ],
    "detectable_format:json_format": [
        (
            {},
            [
                '{"a": 1}',
                '```json\n{"a": 1}\n```',
                "```JSON\n[1, 2]\n```",
                '```\n{"a":1}\n```',
                'Here is JSON: {"a": 1}',
                "```python\n{}\n```",
                "not json",
                '"string"',
                "42",
                '```Json\n{"a": }\n```',
            ],
        ),
    ],
    "detectable_format:title": [
        ({}, ["<<My Title>>\nbody", "<< >>", "<<multi\nline>>", "no title", "<<<Title>>>", "<<>>"]),
    ],
    "combination:two_responses": [
        (
            {},
            [
                "Answer one ****** Answer two",
                "A ****** A",
                "A ****** B ****** C",
                "****** A ****** B",
                "A ****** ****** B",
                "Only one",
                "A******B******",
            ],
        ),
    ],
    "combination:repeat_prompt": [
        (
            {"prompt_to_repeat": "Write a poem about cats."},
            [
                "Write a poem about cats. Here it is...",
                "  write a POEM about cats. ok",
                "Sure! Write a poem about cats.",
                "Write a poem",
            ],
        ),
    ],
    "startend:end_checker": [
        (
            {"end_phrase": "Is there anything else I can help with?"},
            [
                "Done. Is there anything else I can help with?",
                'Done. is there anything else i can help with?"',
                "Is there anything else I can help with? Thanks",
                "Is there anything else I can help with?   \n",
            ],
        ),
        ({"end_phrase": " Peace out. "}, ["Bye, peace out.", "peace out. *"]),
    ],
    "startend:quotation": [
        ({}, ['"hello"', '"', '""', ' "hi" ', "'hi'", '"hi" there', '"multi\nline"']),
    ],
    "change_case:capital_word_frequency": [
        (
            {"capital_frequency": 3, "capital_relation": "at least"},
            ["THE CAT SAT", "THE cat SAT", "I AM OK", "U.S.A. IS BIG", "NON-STOP ACTION"],
        ),
        (
            {"capital_frequency": 2, "capital_relation": "less than"},
            ["ONE capital", "TWO CAPITALS", "none here", "I'M FINE"],
        ),
    ],
    "change_case:english_capital": [
        (
            {},
            [
                "THIS IS AN ENGLISH SENTENCE ABOUT THE WEATHER.",
                "This is not all caps.",
                "DAS IST EIN DEUTSCHER SATZ ÜBER DAS WETTER IN BERLIN.",
                "12345",
                "HELLO world",
            ],
        ),
    ],
    "change_case:english_lowercase": [
        (
            {},
            [
                "this is an english sentence about the weather.",
                "This has a capital.",
                "das ist ein deutscher satz über das wetter in berlin.",
                "123 456",
            ],
        ),
    ],
    "punctuation:no_comma": [
        ({}, ["no commas here", "one, two", "full-width，comma", "semicolons; only"]),
    ],
}


def test_cases_cover_every_official_instruction(official):
    registry, _ = official
    assert set(CASES) == set(ifeval.INSTRUCTION_CHECKERS) == set(registry.INSTRUCTION_DICT)
    assert len(CASES) == 25


@pytest.mark.parametrize("instruction_id", sorted(ifeval.INSTRUCTION_CHECKERS))
def test_kwarg_names_match_official(official, instruction_id):
    registry, _ = official
    official_checker = registry.INSTRUCTION_DICT[instruction_id](instruction_id)
    assert set(checker_kwargs(instruction_id)) == set(official_checker.get_instruction_args_keys())


@pytest.mark.parametrize(
    "instruction_id",
    [
        pytest.param(i, marks=needs_real_punkt) if i in PUNKT_INSTRUCTIONS else i
        for i in sorted(CASES)
    ],
)
def test_hand_made_cases_match_official(official, instruction_id):
    strict_seen, loose_seen = set(), set()
    for kwargs, responses in CASES[instruction_id]:
        record = _record(instruction_id, kwargs)
        mismatches, strict, loose = _parity_mismatches(
            official, record, responses + SHARED_RESPONSES
        )
        assert not mismatches, (
            f"{instruction_id} {kwargs}: (response, mode, ours, official) {mismatches}"
        )
        strict_seen |= strict
        loose_seen |= loose
    # Cases where every verdict agrees would prove nothing; each type must both pass and fail.
    assert strict_seen == {True, False} and loose_seen == {True, False}


def test_punkt_instructions_parity_with_stand_in_model(official, stand_in_punkt):
    for instruction_id in sorted(PUNKT_INSTRUCTIONS):
        for kwargs, responses in CASES[instruction_id]:
            record = _record(instruction_id, kwargs)
            mismatches, strict, _ = _parity_mismatches(
                official, record, responses + SHARED_RESPONSES
            )
            assert not mismatches, f"{instruction_id} {kwargs}: {mismatches}"
            assert strict == {True, False}


def test_parity_check_catches_a_wrong_checker(official, monkeypatch):
    """The comparison must be able to fail: a word count by str.split differs from `\\w+` runs."""

    @dataclasses.dataclass
    class SplitWordCount(instructions.NumberOfWords):
        def check(self, response):
            return util.compare(len(response.split()), self.relation, self.num_words)

    monkeypatch.setitem(
        ifeval.INSTRUCTION_CHECKERS, "length_constraints:number_words", SplitWordCount
    )
    record = _record("length_constraints:number_words", {"num_words": 5, "relation": "at least"})
    mismatches, _, _ = _parity_mismatches(official, record, ["a,b,c,d,e", "don't stop-me now"])
    assert [(response, mode) for response, mode, *_ in mismatches] == [
        ("a,b,c,d,e", "strict"),
        ("a,b,c,d,e", "loose"),
        ("don't stop-me now", "strict"),
        ("don't stop-me now", "loose"),
    ]
