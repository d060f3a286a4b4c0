"""Text utilities the IFEval checkers share: word/sentence counting, Punkt access, language detection."""

from __future__ import annotations

import functools

import nltk
from langdetect import DetectorFactory, LangDetectException
from langdetect.detector_factory import PROFILES_DIRECTORY

# The official checkers compare counts with exactly these two relations.
LESS_THAN = "less than"
AT_LEAST = "at least"
RELATIONS = (LESS_THAN, AT_LEAST)

# ISO 639-1 codes accepted by `language:response_language` (the official
# `instructions_util.LANGUAGE_CODES`); an unknown code is a KeyError there.
LANGUAGE_CODES = {
    "en": "English",
    "es": "Spanish",
    "pt": "Portuguese",
    "ar": "Arabic",
    "hi": "Hindi",
    "fr": "French",
    "ru": "Russian",
    "de": "German",
    "ja": "Japanese",
    "it": "Italian",
    "bn": "Bengali",
    "uk": "Ukrainian",
    "th": "Thai",
    "ur": "Urdu",
    "ta": "Tamil",
    "te": "Telugu",
    "bg": "Bulgarian",
    "ko": "Korean",
    "pl": "Polish",
    "he": "Hebrew",
    "fa": "Persian",
    "vi": "Vietnamese",
    "ne": "Nepali",
    "sw": "Swahili",
    "kn": "Kannada",
    "mr": "Marathi",
    "gu": "Gujarati",
    "pa": "Punjabi",
    "ml": "Malayalam",
    "fi": "Finnish",
}

# langdetect samples n-grams at random; the official code leaves the seed unset,
# so its verdicts on borderline text can change between runs. We fix it.
LANGDETECT_SEED = 0

# The resource the official code loads as "tokenizers/punkt/english.pickle":
# nltk >= 3.9 refuses pickles and reads the pickle-free `punkt_tab` model instead.
PUNKT_RESOURCE = "punkt_tab"
_OFFICIAL_PUNKT_URL = "nltk:tokenizers/punkt/english.pickle"


class PunktUnavailableError(LookupError):
    """NLTK's Punkt model is not installed, so an instruction that needs it cannot be scored.

    Raised instead of approximating: a regex sentence splitter would give
    different counts from the official checker and silently shift the metric.
    """

    def __init__(self, instruction_id: str, needed_for: str):
        self.instruction_id = instruction_id
        super().__init__(
            f"IFEval instruction {instruction_id!r} needs NLTK's Punkt model "
            f"({PUNKT_RESOURCE!r}) for {needed_for}, and it is not installed "
            f"(searched: {list(nltk.data.path)}). Install it on a machine with network "
            f"access with `python -m nltk.downloader {PUNKT_RESOURCE}`, or set NLTK_DATA "
            f"to a directory holding tokenizers/{PUNKT_RESOURCE}/english/. To score the "
            "other instructions anyway, call score(..., on_missing_punkt='exclude'), "
            "which reports this instruction as unscorable instead of passed or failed."
        )


@functools.cache
def _punkt_sentence_tokenizer():
    # functools.cache does not keep exceptions, so installing the model mid-process works.
    return nltk.data.load(_OFFICIAL_PUNKT_URL)


def punkt_available() -> bool:
    """Whether the Punkt model the two sentence-aware instructions need is installed."""
    try:
        _punkt_sentence_tokenizer()
    except LookupError:
        return False
    return True


def count_sentences(text: str, *, needed_by: str) -> int:
    """Number of Punkt sentences, as the official `count_sentences`; `needed_by` names the
    instruction for the error raised when Punkt is missing."""
    try:
        tokenizer = _punkt_sentence_tokenizer()
    except LookupError as missing:
        raise PunktUnavailableError(needed_by, "sentence counting") from missing
    return len(tokenizer.tokenize(text))


def word_tokenize(text: str, *, needed_by: str) -> list[str]:
    """`nltk.word_tokenize`, as the official `capital_word_frequency` calls it."""
    # word_tokenize splits sentences with the same Punkt model first; checking it
    # here means a LookupError is reported as the missing model, never as a bug.
    try:
        _punkt_sentence_tokenizer()
    except LookupError as missing:
        raise PunktUnavailableError(needed_by, "word tokenization") from missing
    return nltk.word_tokenize(text)


def count_words(text: str) -> int:
    """Number of `\\w+` runs: so "don't" is two words and "state-of-the-art" four."""
    return len(nltk.tokenize.RegexpTokenizer(r"\w+").tokenize(text))


def compare(actual: int, relation: str, threshold: int) -> bool:
    """`actual < threshold` for "less than", `actual >= threshold` for "at least"."""
    if relation == LESS_THAN:
        return actual < threshold
    if relation == AT_LEAST:
        return actual >= threshold
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


@functools.lru_cache(maxsize=1)
def _language_detector_factory() -> DetectorFactory:
    # Our own factory, so fixing the seed does not change langdetect's global one.
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(LANGDETECT_SEED)
    return factory


def detect_language(text: str) -> str | None:
    """langdetect's ISO 639-1 guess, or None when it finds no features (e.g. only digits)."""
    detector = _language_detector_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None
