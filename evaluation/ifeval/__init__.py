"""IFEval: 25 verifiable instructions, scored strict and loose, with parity to the official checkers.

Usage::

    from evaluation import ifeval

    records = ifeval.load_prompts()                    # 541 official records
    scores = [ifeval.score(r, generate(r["prompt"])) for r in records]
    metrics = ifeval.aggregate(scores)                 # four metrics + breakdowns
    ifeval.check(records[0], "some response", loose=True)  # -> [True, False, ...]

The checkers reimplement google-research's `instruction_following_eval`, as
vendored in lm_eval 0.4.13 (`lm_eval/tasks/ifeval/`), verdict for verdict;
tests/evaluation/test_ifeval_parity*.py checks that against lm_eval itself.
The differences are all places where the official code draws random values:

* A missing or out-of-range kwarg (negative count, `nth_paragraph` outside
  1..`num_paragraphs`, ...) is an `InstructionKwargsError` naming the
  instruction and the kwarg. None-valued kwargs are the data format (unused
  schema fields) and dropped. lm_eval drops every falsy value, so an explicit
  0 is randomised there and honoured here; the official data has none. (A
  negative `capital_frequency`, accepted there as is, is an error here too.)
* `keywords:letter_frequency` counts the character it is given. Official
  prompts 1122 and 1129 ask for '#' and '!', which the official checker swaps
  for a random ASCII letter.
* langdetect runs with a fixed seed; the official code leaves it unseeded, so
  its verdicts on borderline text can change from run to run.

NLTK Punkt: `length_constraints:number_sentences` (Punkt sentence count) and
`change_case:capital_word_frequency` (`nltk.word_tokenize`) need NLTK's Punkt
model, resource `punkt_tab` (nltk >= 3.9 serves the official
"tokenizers/punkt/english.pickle" from it). Nothing here downloads it, at
import or later. When it is missing there is no approximation:

* `check(...)` and `score(...)` raise `PunktUnavailableError`, which names the
  instruction and says how to install the model
  (`python -m nltk.downloader punkt_tab` where there is a network, or
  `NLTK_DATA` pointing at a copy).
* `score(..., on_missing_punkt="exclude")` instead records those instructions
  as unscorable (verdict None) and the prompt-level verdicts as None;
  `aggregate` leaves them out of every metric and reports how many it left out
  (`num_unscorable_instructions`, `num_prompts_scored`, ...). They are never
  counted as passed or failed.
"""

from evaluation.ifeval.aggregate import aggregate
from evaluation.ifeval.data import DEFAULT_DATA_PATH, HUB_DATASET, load_prompts
from evaluation.ifeval.registry import (
    INSTRUCTION_CHECKERS,
    PUNKT_INSTRUCTIONS,
    InstructionKwargsError,
    UnknownInstructionError,
    build_checker,
    category,
)
from evaluation.ifeval.scoring import check, loose_variants, score
from evaluation.ifeval.util import PunktUnavailableError, punkt_available

__all__ = [
    "DEFAULT_DATA_PATH",
    "HUB_DATASET",
    "INSTRUCTION_CHECKERS",
    "PUNKT_INSTRUCTIONS",
    "InstructionKwargsError",
    "PunktUnavailableError",
    "UnknownInstructionError",
    "aggregate",
    "build_checker",
    "category",
    "check",
    "load_prompts",
    "loose_variants",
    "punkt_available",
    "score",
]
