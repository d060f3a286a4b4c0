"""A synthetic, verifiable preference set: prompts with IFEval-style checkable constraints.

Each record asks for a short text about a topic under one constraint taken from IFEval
(``instruction_id_list`` / ``kwargs`` in the official format, so ``evaluation.ifeval`` scores
it). The chosen response follows the constraint; the rejected one is the same kind of text
that violates it. Deterministic for a seed, so the tiny tokenizer is trained on it too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

TOPICS = [
    "the ocean", "a small garden", "winter mornings", "the city library", "mountain trails",
    "a rainy day", "the old bridge", "fresh bread", "the night sky", "a quiet river",
    "summer fruit", "the village market", "a long journey", "the forest path", "green tea",
    "a friendly dog", "the school choir", "an autumn walk", "the harbor lights", "a cozy kitchen",
]
ADJECTIVES = ["calm", "bright", "gentle", "busy", "quiet", "warm", "simple", "lovely", "fresh", "peaceful"]
KEYWORDS = ["sunlight", "memory", "harmony", "journey", "wonder", "balance", "comfort", "color"]
END_PHRASE = "Is there anything else I can help with?"
SENTENCES = [
    "{topic} feels {adj} and {adj2}.",
    "many people enjoy {topic} because it is {adj}.",
    "there is something {adj} about {topic}.",
    "i often think about {topic} when the day is {adj2}.",
    "{topic} reminds me that life can be {adj}.",
]
COMMA_SENTENCES = [
    "{topic}, as many know, is {adj}.",
    "in the end, {topic} stays {adj2}.",
    "well, {topic} is {adj}, {adj2} and kind.",
]


def _sentences(rng: random.Random, topic: str, count: int) -> list[str]:
    picks = rng.sample(SENTENCES, count)
    return [s.format(topic=topic, adj=rng.choice(ADJECTIVES), adj2=rng.choice(ADJECTIVES)) for s in picks]


def _capitalize(sentences: list[str]) -> str:
    return " ".join(s[0].upper() + s[1:] for s in sentences)


# Each constraint: (instruction id, prompt text, kwargs, chosen builder, rejected builder).
# Builders get (rng, topic, base sentences in lowercase, kwargs).
Builder = Callable[[random.Random, str, list[str], dict[str, Any]], str]


def _constraints(rng: random.Random) -> list[tuple[str, str, dict[str, Any], Builder, Builder]]:
    keyword = rng.choice(KEYWORDS)
    forbidden = rng.choice(ADJECTIVES)
    return [
        ("change_case:english_lowercase",
         "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
         {}, lambda r, t, s, k: " ".join(s), lambda r, t, s, k: _capitalize(s).upper()),
        ("change_case:english_capital",
         "Your entire response should be in English, and in all capital letters.",
         {}, lambda r, t, s, k: " ".join(s).upper(), lambda r, t, s, k: " ".join(s)),
        ("punctuation:no_comma",
         "In your entire response, refrain from the use of any commas.",
         {}, lambda r, t, s, k: _capitalize(s),
         lambda r, t, s, k: _capitalize(s[:-1] + [r.choice(COMMA_SENTENCES).format(
             topic=t, adj=r.choice(ADJECTIVES), adj2=r.choice(ADJECTIVES))])),
        ("startend:end_checker",
         f"Finish your response with this exact phrase '{END_PHRASE}'. No other words should follow this phrase.",
         {"end_phrase": END_PHRASE}, lambda r, t, s, k: _capitalize(s) + " " + END_PHRASE,
         lambda r, t, s, k: _capitalize(s)),
        ("startend:quotation",
         "Wrap your entire response with double quotation marks.",
         {}, lambda r, t, s, k: '"' + _capitalize(s) + '"', lambda r, t, s, k: _capitalize(s)),
        ("keywords:existence",
         f"Include keywords {keyword} in the response.",
         {"keywords": [keyword]}, lambda r, t, s, k: _capitalize(s) + f" It is full of {k['keywords'][0]}.",
         lambda r, t, s, k: _capitalize(s)),
        ("keywords:forbidden_words",
         f"Do not include keywords {forbidden} in the response.",
         {"forbidden_words": [forbidden]},
         lambda r, t, s, k: _capitalize([x for x in s if k["forbidden_words"][0] not in x.split()] or ["it is nice."]),
         lambda r, t, s, k: _capitalize(s[:-1] + [f"{t} is {k['forbidden_words'][0]}."])),
        ("detectable_format:title",
         "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
         {}, lambda r, t, s, k: f"<<{t.title()}>>\n" + _capitalize(s), lambda r, t, s, k: _capitalize(s)),
    ]


CONSTRAINT_IDS = [c[0] for c in _constraints(random.Random(0))]


def make_preference_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` records: ``key``, ``prompt``, ``chosen``, ``rejected``, ``instruction_id_list``, ``kwargs``."""
    rng = random.Random(seed)
    records = []
    for key in range(n):
        topic = rng.choice(TOPICS)
        instruction_id, text, kwargs, chosen_fn, rejected_fn = rng.choice(_constraints(rng))
        base = _sentences(rng, topic, rng.randint(2, 3))
        records.append({
            "key": key,
            "prompt": f"Write a short note about {topic}. {text}",
            "chosen": chosen_fn(rng, topic, base, kwargs),
            "rejected": rejected_fn(rng, topic, base, kwargs),
            "instruction_id_list": [instruction_id],
            "kwargs": [kwargs],
        })
    return records


def make_lm_records(n: int, seed: int) -> list[dict[str, Any]]:
    """Unpaired text of the synthetic language, as rows a chosen-only (SFT) loss trains on.

    Each of ``n`` preference records gives two conversations, its prompt with the response that
    follows the constraint and with the one that violates it; each conversation is the
    ``chosen`` side of exactly one row, so an SFT pass over the rows is a plain language-model
    pass over every conversation once. ``rejected`` holds the record's other response (scored
    for monitoring only; SFT never trains on it). ``follows`` says which kind ``chosen`` is.
    """
    rows = []
    for record in make_preference_records(n, seed):
        for follows, (text, other) in ((True, (record["chosen"], record["rejected"])),
                                       (False, (record["rejected"], record["chosen"]))):
            rows.append({"key": len(rows), "prompt": record["prompt"], "chosen": text, "rejected": other,
                         "follows": follows})
    return rows


def tokenizer_corpus(n: int = 3000, seed: int = 12345) -> Iterator[str]:
    """Text the tiny tokenizer is trained on: synthetic prompts and both responses."""
    for record in make_preference_records(n, seed):
        yield record["prompt"]
        yield record["chosen"]
        yield record["rejected"]


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path
