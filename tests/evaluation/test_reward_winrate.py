"""Reward-model win rate: golden aggregation, symmetry properties, and a tiny local reward model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaForSequenceClassification

from evaluation.reward_winrate import (
    RewardModel,
    aggregate,
    compare,
    load_paired_outputs,
    reward_win_rate,
)
from orpo.chat import with_single_bos
from orpo.tiny import build_tokenizer, tiny_llama_config

PROMPTS = [
    "Name a color.",
    "Say hello politely.",
    "What is 2 + 2?",
    "Describe the sea in one line.",
    "Pick a fruit.",
]
ANSWERS_A = ["Blue.", "Hello there, nice to meet you!", "4", "Wide, grey and restless.", "Apple"]
ANSWERS_B = ["I do not know.", "hi", "2 + 2 = 5", "The sea is water.", "Bananas are yellow fruit."]


@pytest.fixture(scope="module")
def reward_model_path(tmp_path_factory) -> str:
    """A random-init Llama with a one-output classification head, saved with the tiny tokenizer
    (which has a chat template)."""
    path = tmp_path_factory.mktemp("reward_model")
    tokenizer = build_tokenizer()
    config = tiny_llama_config(len(tokenizer), tokenizer=tokenizer)
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reward_model(reward_model_path) -> RewardModel:
    return RewardModel(reward_model_path, batch_size=4)


def test_compare_scores_one_prompt():
    assert (compare(1.0, 0.5), compare(0.5, 1.0), compare(0.3, 0.3)) == (1.0, 0.0, 0.5)
    assert compare(1.0, 1.05, tie_tolerance=0.1) == 0.5


def test_aggregate_golden_values():
    """outcomes 1, 0.5, 0, 1: win rate 2.5 / 4 = 0.625; deviations 0.375, -0.125, -0.625, 0.375,
    squares sum 0.6875, sample variance 0.6875 / 3, stderr sqrt(0.6875 / 3 / 4) = 0.239357."""
    result = aggregate([1.0, 0.5, 0.0, 1.0])
    assert result["win_rate"] == 0.625
    assert result["stderr"] == pytest.approx(math.sqrt(0.6875 / 12))
    assert (result["n"], result["wins"], result["ties"], result["losses"]) == (4, 2, 1, 1)
    assert aggregate([1.0])["stderr"] is None


def test_model_against_itself_is_exactly_one_half(reward_model):
    result = reward_win_rate(PROMPTS, ANSWERS_A, ANSWERS_A, reward_model)
    assert result["win_rate"] == 0.5
    assert result["ties"] == result["n"] == len(PROMPTS)


def test_swapping_the_models_gives_the_complement(reward_model):
    a_vs_b = reward_win_rate(PROMPTS, ANSWERS_A, ANSWERS_B, reward_model)
    b_vs_a = reward_win_rate(PROMPTS, ANSWERS_B, ANSWERS_A, reward_model)
    assert a_vs_b["ties"] < a_vs_b["n"]  # the random model does tell the answers apart
    assert a_vs_b["win_rate"] + b_vs_a["win_rate"] == pytest.approx(1.0, abs=1e-12)
    assert a_vs_b["stderr"] == pytest.approx(b_vs_a["stderr"])
    assert [row["reward_a"] for row in a_vs_b["per_prompt"]] == [
        row["reward_b"] for row in b_vs_a["per_prompt"]
    ]


def test_rewards_do_not_depend_on_batching(reward_model, monkeypatch):
    """Padding must not leak into the reward: one at a time equals batches of 4 (the head reads
    each sequence's last real token)."""
    batched = reward_model.score(PROMPTS, ANSWERS_B)
    monkeypatch.setattr(reward_model, "batch_size", 1)
    assert reward_model.score(PROMPTS, ANSWERS_B) == pytest.approx(batched, abs=1e-5)


def test_the_reward_models_chat_template_is_applied(reward_model):
    tokenizer = reward_model.tokenizer
    messages = [
        {"role": "user", "content": PROMPTS[0]},
        {"role": "assistant", "content": ANSWERS_A[0]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    expected = with_single_bos(
        tokenizer, tokenizer(rendered, add_special_tokens=False)["input_ids"]
    )
    assert reward_model.input_ids(PROMPTS[0], ANSWERS_A[0]) == expected
    assert tokenizer.convert_ids_to_tokens(expected).count("<|assistant|>") == 1


def test_without_a_chat_template_prompt_and_response_are_a_text_pair(reward_model, monkeypatch):
    monkeypatch.setattr(reward_model.tokenizer, "chat_template", None)
    ids = reward_model.input_ids("Name a color.", "Blue.")
    assert ids == reward_model.tokenizer("Name a color.", "Blue.")["input_ids"]
    assert "<|assistant|>" not in reward_model.tokenizer.convert_ids_to_tokens(ids)


def test_long_inputs_keep_their_end(reward_model, monkeypatch):
    full = reward_model.input_ids("word " * 100, "the final answer")
    monkeypatch.setattr(reward_model, "max_length", 16)
    ids = reward_model.input_ids("word " * 100, "the final answer")
    assert (
        len(ids) == 16 and ids[0] == reward_model.tokenizer.bos_token_id and ids[1:] == full[-15:]
    )


def test_paired_generation_outputs_match_on_ids(tmp_path):
    def record(instruction, output):
        return {
            "instruction": instruction,
            "output": output,
            "messages": [
                {"role": "user", "content": instruction},
                {"role": "assistant", "content": output},
            ],
        }

    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps(record(p, a)) + "\n" for p, a in zip(PROMPTS, ANSWERS_A))
    )
    reversed_b = list(zip(PROMPTS, ANSWERS_B))[::-1][:-1]  # other order, one prompt missing
    (tmp_path / "b.jsonl").write_text(
        "".join(json.dumps(record(p, b)) + "\n" for p, b in reversed_b)
    )
    prompts, answers_a, answers_b = load_paired_outputs(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert prompts == [[{"role": "user", "content": p}] for p in PROMPTS[1:]]
    assert (answers_a, answers_b) == (ANSWERS_A[1:], ANSWERS_B[1:])
