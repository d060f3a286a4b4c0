"""Behaviour of evaluation.ifeval: kwargs errors, scoring, aggregation, Punkt handling, loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import langdetect
import nltk
import pytest

from evaluation import ifeval
from evaluation.ifeval import data, util
from evaluation.ifeval.registry import checker_kwargs

REPO_ROOT = Path(__file__).parents[2]
DATA_PATH = Path(__file__).parents[3] / "shared/benchmarks/ifeval/input_data.jsonl"
needs_data = pytest.mark.skipif(
    not DATA_PATH.exists(), reason=f"IFEval data not found at {DATA_PATH} (not shipped in the repo)"
)

# One valid kwargs dict per instruction, as the official data would give it.
VALID_KWARGS = {
    "keywords:existence": {"keywords": ["cat", "dog"]},
    "keywords:frequency": {"keyword": "cat", "frequency": 2, "relation": "at least"},
    "keywords:forbidden_words": {"forbidden_words": ["bad"]},
    "keywords:letter_frequency": {"letter": "a", "let_frequency": 3, "let_relation": "less than"},
    "language:response_language": {"language": "de"},
    "length_constraints:number_sentences": {"num_sentences": 2, "relation": "at least"},
    "length_constraints:number_paragraphs": {"num_paragraphs": 3},
    "length_constraints:number_words": {"num_words": 100, "relation": "less than"},
    "length_constraints:nth_paragraph_first_word": {
        "num_paragraphs": 3,
        "nth_paragraph": 2,
        "first_word": "then",
    },
    "detectable_content:number_placeholders": {"num_placeholders": 2},
    "detectable_content:postscript": {"postscript_marker": "P.S."},
    "detectable_format:number_bullet_lists": {"num_bullets": 3},
    "detectable_format:constrained_response": {},
    "detectable_format:number_highlighted_sections": {"num_highlights": 2},
    "detectable_format:multiple_sections": {"section_spliter": "Section", "num_sections": 2},
    "detectable_format:json_format": {},
    "detectable_format:title": {},
    "combination:two_responses": {},
    "combination:repeat_prompt": {"prompt_to_repeat": "Say hi."},
    "startend:end_checker": {"end_phrase": "Bye."},
    "startend:quotation": {},
    "change_case:capital_word_frequency": {"capital_frequency": 2, "capital_relation": "at least"},
    "change_case:english_capital": {},
    "change_case:english_lowercase": {},
    "punctuation:no_comma": {},
}


def _record(instruction_ids, kwargs_list, key=1):
    return {
        "key": key,
        "prompt": "p",
        "instruction_id_list": instruction_ids,
        "kwargs": kwargs_list,
    }


def test_every_instruction_builds_from_its_explicit_kwargs():
    assert set(VALID_KWARGS) == set(ifeval.INSTRUCTION_CHECKERS)
    for instruction_id, kwargs in VALID_KWARGS.items():
        assert set(checker_kwargs(instruction_id)) == set(kwargs)
        ifeval.build_checker(instruction_id, kwargs)


@pytest.mark.parametrize(
    "instruction_id, missing",
    [(i, name) for i, kwargs in sorted(VALID_KWARGS.items()) for name in kwargs],
)
def test_missing_kwarg_is_an_error_naming_instruction_and_kwarg(instruction_id, missing):
    kwargs = {**VALID_KWARGS[instruction_id], missing: None}  # None is "absent" in the data format
    with pytest.raises(ifeval.InstructionKwargsError) as error:
        ifeval.build_checker(instruction_id, kwargs)
    assert instruction_id in str(error.value) and repr(missing) in str(error.value)


@pytest.mark.parametrize(
    "instruction_id, bad_kwargs, named",
    [
        ("length_constraints:number_words", {"num_words": 5, "relation": "at most"}, "relation"),
        ("length_constraints:number_words", {"num_words": -1, "relation": "at least"}, "num_words"),
        (
            "length_constraints:number_words",
            {"num_words": "5", "relation": "at least"},
            "num_words",
        ),
        ("detectable_format:number_bullet_lists", {"num_bullets": True}, "num_bullets"),
        (
            "length_constraints:nth_paragraph_first_word",
            {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "x"},
            "nth_paragraph",
        ),
        (
            "keywords:letter_frequency",
            {"letter": "ab", "let_frequency": 1, "let_relation": "at least"},
            "letter",
        ),
        ("keywords:existence", {"keywords": "cat"}, "keywords"),
        ("keywords:existence", {"keywords": []}, "keywords"),
        ("language:response_language", {"language": "xx"}, "language"),
        ("startend:end_checker", {"end_phrase": "  "}, "end_phrase"),
        ("detectable_format:title", {"title": "x"}, "title"),  # unknown kwarg
    ],
)
def test_invalid_kwargs_are_errors(instruction_id, bad_kwargs, named):
    with pytest.raises(ifeval.InstructionKwargsError, match=named) as error:
        ifeval.build_checker(instruction_id, bad_kwargs)
    assert instruction_id in str(error.value)


def test_unknown_instruction_and_misaligned_record_are_errors():
    with pytest.raises(ifeval.UnknownInstructionError, match="keywords:rhyme"):
        ifeval.check(_record(["keywords:rhyme"], [{}]), "text")
    with pytest.raises(ValueError, match="1 instructions but 2 kwargs"):
        ifeval.check(_record(["punctuation:no_comma"], [{}, {}]), "text")


def test_category_is_the_prefix():
    assert ifeval.category("length_constraints:number_words") == "length_constraints"


def test_loose_variants_in_official_order():
    assert ifeval.loose_variants("Sure:\n**Title**\nBody *x*\nBye") == [
        "Sure:\n**Title**\nBody *x*\nBye",  # as is
        "Sure:\nTitle\nBody x\nBye",  # without *
        "**Title**\nBody *x*\nBye",  # without first line
        "Sure:\n**Title**\nBody *x*",  # without last line
        "**Title**\nBody *x*",  # without both
        "Title\nBody x\nBye",
        "Sure:\nTitle\nBody x",
        "Title\nBody x",
    ]


def test_check_and_score_on_a_two_instruction_record():
    """Response "<<T>>\\nHello, world":
    title: "<<T>>" is a title -> strict pass.
    no_comma: the comma fails strict; loose drops the last line, leaving "<<T>>" -> pass.
    So strict [False, True] (prompt fails), loose [True, True] (prompt passes)."""
    record = _record(["punctuation:no_comma", "detectable_format:title"], [{}, {}], key=7)
    response = "<<T>>\nHello, world"
    assert ifeval.check(record, response) == [False, True]
    assert ifeval.check(record, response, loose=True) == [True, True]
    assert ifeval.score(record, response) == {
        "key": 7,
        "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
        "inst_level_strict": [False, True],
        "inst_level_loose": [True, True],
        "prompt_level_strict": False,
        "prompt_level_loose": True,
        "unscorable": [],
    }


def test_blank_response_follows_nothing():
    # "no commas" and "no forbidden words" hold for "", but the official scorer fails blanks.
    record = _record(
        ["punctuation:no_comma", "keywords:forbidden_words"], [{}, {"forbidden_words": ["x"]}]
    )
    assert ifeval.check(record, "  \n ") == [False, False]
    assert ifeval.check(record, "  \n ", loose=True) == [False, False]


def test_aggregate_golden_values():
    """Three prompts, five instructions:
    A: no_comma strict T loose T; title strict F loose T  -> prompt strict F, loose T
    B: no_comma strict F loose F                          -> prompt strict F, loose F
    C: number_words strict T loose T                      -> prompt strict T, loose T
    prompt strict 1/3, prompt loose 2/3; inst strict 2/4 = 0.5, inst loose 3/4 = 0.75.
    detectable_format (title only): strict 0/1, loose 1/1; punctuation: strict 1/2, loose 1/2."""
    scores = [
        {
            "instruction_id_list": ["punctuation:no_comma", "detectable_format:title"],
            "inst_level_strict": [True, False],
            "inst_level_loose": [True, True],
            "prompt_level_strict": False,
            "prompt_level_loose": True,
        },
        {
            "instruction_id_list": ["punctuation:no_comma"],
            "inst_level_strict": [False],
            "inst_level_loose": [False],
            "prompt_level_strict": False,
            "prompt_level_loose": False,
        },
        {
            "instruction_id_list": ["length_constraints:number_words"],
            "inst_level_strict": [True],
            "inst_level_loose": [True],
            "prompt_level_strict": True,
            "prompt_level_loose": True,
        },
    ]
    metrics = ifeval.aggregate(scores)
    assert metrics["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert metrics["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert metrics["inst_level_strict_acc"] == 0.5
    assert metrics["inst_level_loose_acc"] == 0.75
    assert metrics["per_category"]["detectable_format"] == {
        "inst_level_strict_acc": 0.0,
        "inst_level_loose_acc": 1.0,
        "num_instructions": 1,
    }
    assert metrics["per_instruction"]["punctuation:no_comma"] == {
        "inst_level_strict_acc": 0.5,
        "inst_level_loose_acc": 0.5,
        "num_instructions": 2,
    }
    assert list(metrics["per_category"]) == [
        "detectable_format",
        "length_constraints",
        "punctuation",
    ]
    assert (metrics["num_prompts"], metrics["num_prompts_scored"]) == (3, 3)
    assert (metrics["num_instructions"], metrics["num_unscorable_instructions"]) == (4, 0)
    with pytest.raises(ValueError):
        ifeval.aggregate([])


def test_letter_frequency_counts_the_character_asked_for():
    """Divergence: official prompts 1122 and 1129 ask for '#' and '!'; the official checker
    replaces them by a random letter. "#a #b #c #d" has four '#': at least 4 -> pass."""
    record = _record(
        ["keywords:letter_frequency"],
        [{"letter": "#", "let_frequency": 4, "let_relation": "at least"}],
    )
    assert ifeval.check(record, "#a #b #c #d") == [True]
    assert ifeval.check(record, "#a #b #c") == [False]


def test_explicit_zero_is_honoured():
    # lm_eval drops falsy kwargs (so 0 becomes random there); 0 highlights is always met here.
    record = _record(["detectable_format:number_highlighted_sections"], [{"num_highlights": 0}])
    assert ifeval.check(record, "no highlights at all") == [True]


def test_language_detection_is_seeded_without_touching_langdetect_globals():
    # "Nein danke" is German under some langdetect seeds and Afrikaans under others.
    global_seed = langdetect.DetectorFactory.seed
    assert {util.detect_language("Nein danke") for _ in range(5)} == {"af"}
    assert util.detect_language("12345") is None
    assert langdetect.DetectorFactory.seed == global_seed


# --- NLTK Punkt: missing model fails loudly, never downloads ---


@pytest.fixture
def no_punkt(tmp_path, monkeypatch):
    """nltk sees an empty data directory only, and may not download."""
    download = mock.Mock(side_effect=AssertionError("nltk.download must not be called"))
    monkeypatch.setattr(nltk, "download", download)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    util._punkt_sentence_tokenizer.cache_clear()
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    yield
    monkeypatch.undo()
    util._punkt_sentence_tokenizer.cache_clear()
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    assert not download.called


PUNKT_RECORD = _record(
    [
        "length_constraints:number_sentences",
        "change_case:capital_word_frequency",
        "punctuation:no_comma",
    ],
    [
        VALID_KWARGS["length_constraints:number_sentences"],
        VALID_KWARGS["change_case:capital_word_frequency"],
        {},
    ],
)


@pytest.mark.parametrize("instruction_id", sorted(ifeval.PUNKT_INSTRUCTIONS))
def test_missing_punkt_raises_naming_instruction_and_fix(no_punkt, instruction_id):
    assert not ifeval.punkt_available()
    record = _record([instruction_id], [VALID_KWARGS[instruction_id]])
    for loose in (False, True):
        with pytest.raises(ifeval.PunktUnavailableError) as error:
            ifeval.check(record, "ONE SENTENCE. TWO SENTENCES.", loose=loose)
        message = str(error.value)
        assert instruction_id in message and "punkt_tab" in message
        assert "python -m nltk.downloader punkt_tab" in message and "NLTK_DATA" in message
        assert error.value.instruction_id == instruction_id
    with pytest.raises(ifeval.PunktUnavailableError):
        ifeval.score(record, "One. Two.")
    # Blank responses fail before any tokenizer is needed, as in the official scorer.
    assert ifeval.check(record, " ") == [False]


def test_missing_punkt_can_be_excluded_and_is_reported(no_punkt):
    """One punkt-free prompt (strict pass) plus PUNKT_RECORD, whose no_comma passes:
    instruction level 2/2 over scorable ones; prompt level 1/1 (PUNKT_RECORD excluded)."""
    scored = ifeval.score(PUNKT_RECORD, "No commas here.", on_missing_punkt="exclude")
    assert scored["inst_level_strict"] == [None, None, True]
    assert scored["inst_level_loose"] == [None, None, True]
    assert scored["prompt_level_strict"] is None and scored["prompt_level_loose"] is None
    assert scored["unscorable"] == PUNKT_RECORD["instruction_id_list"][:2]

    other = ifeval.score(
        _record(["punctuation:no_comma"], [{}]), "Fine.", on_missing_punkt="exclude"
    )
    metrics = ifeval.aggregate([scored, other])
    assert metrics["inst_level_strict_acc"] == 1.0 and metrics["prompt_level_strict_acc"] == 1.0
    assert (metrics["num_prompts"], metrics["num_prompts_scored"]) == (2, 1)
    assert (metrics["num_instructions"], metrics["num_instructions_scored"]) == (4, 2)
    assert metrics["num_unscorable_instructions"] == 2
    assert metrics["unscorable_by_instruction"] == {
        "change_case:capital_word_frequency": 1,
        "length_constraints:number_sentences": 1,
    }
    assert "length_constraints" not in metrics["per_category"]
    with pytest.raises(ValueError, match="on_missing_punkt"):
        ifeval.score(PUNKT_RECORD, "x", on_missing_punkt="ignore")


def test_importing_never_downloads():
    script = (
        "import nltk\n"
        "def refuse(*args, **kwargs): raise SystemExit('nltk.download called')\n"
        "nltk.download = refuse\n"
        "import evaluation.ifeval as ifeval\n"
        "ifeval.punkt_available()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a budget: a fresh interpreter's imports, on a loaded machine
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --- loading ---


@needs_data
def test_load_prompts_reads_the_official_jsonl():
    records = ifeval.load_prompts(DATA_PATH)
    assert len(records) == 541
    assert set(records[0]) == {"key", "prompt", "instruction_id_list", "kwargs"}
    assert ifeval.DEFAULT_DATA_PATH.resolve() == DATA_PATH.resolve()
    assert ifeval.load_prompts() == records


def test_load_prompts_falls_back_to_the_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DEFAULT_DATA_PATH", tmp_path / "absent.jsonl")
    # Hub rows carry every schema kwarg, unused ones as None.
    row = {
        "key": 5,
        "prompt": "p",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{"num_words": None, "relation": None}],
    }
    datasets = pytest.importorskip("datasets")
    load = mock.Mock(return_value=[row])
    monkeypatch.setattr(datasets, "load_dataset", load)
    records = ifeval.load_prompts()
    load.assert_called_once_with("google/IFEval", split="train")
    assert records == [row]
    assert ifeval.check(records[0], "no comma") == [True]


def test_load_prompts_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        ifeval.load_prompts(tmp_path / "missing.jsonl")
