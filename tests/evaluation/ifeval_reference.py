"""Helpers for the IFEval parity tests (their fixtures live in conftest.py)."""

from __future__ import annotations

import importlib

import nltk

from evaluation.ifeval import util


def punkt_skip_reason(covered_by: str) -> str:
    return ("NLTK Punkt model 'punkt_tab' not installed (python -m nltk.downloader punkt_tab); "
            "the official number_sentences and capital_word_frequency checkers need it. "
            f"{covered_by} still covers our wiring.")


def clear_punkt_caches():
    util._punkt_sentence_tokenizer.cache_clear()
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    official_util = importlib.import_module("lm_eval.tasks.ifeval.instructions_util")
    official_util._get_sentence_tokenizer.cache_clear()
