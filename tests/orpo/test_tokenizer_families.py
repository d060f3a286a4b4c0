"""Training ids equal what the model sees, for every chat-tokenizer family (tests/orpo/tokenizer_families.py).

The reference is each tokenizer's own ``apply_chat_template`` text of the whole conversation,
tokenized in one piece, with BOS once and cut after the turn's end token. The generation prompt
comes from the generation stage's own code (``BenchmarkRun.requests``, MT-Bench format).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from orpo.chat import turn_end_token_id
from orpo.data import TokenizeSpec, normalize_record, tokenize_pair
from pipelines.generation import vllm_backend
from pipelines.generation.benchmark_run import BenchmarkRun
from pipelines.generation.config import BenchmarkConfig
from pipelines.generation.hf_backend import _eos_token_ids
from tests.orpo.tokenizer_families import families

FAMILIES = ["sentencepiece", "chatml", "llama3", "zephyr"]
SPEC = TokenizeSpec(max_length=4096, max_prompt_length=2048)

# Responses that start with a word, punctuation, whitespace and a digit, single and multi-turn.
RECORDS = [
    {"prompt": "Say hello to the team.", "chosen": "Hello everyone, welcome back!", "rejected": "Go away."},
    {"prompt": "Is it done?", "chosen": "...well, almost.", "rejected": "!? No."},
    {"prompt": "Give an answer.", "chosen": " Leading space here.", "rejected": "  two spaces"},
    {"prompt": "How many?", "chosen": "42 is the number.", "rejected": "7"},
    {"prompt": "Spell it.", "chosen": "é, then ü: done.", "rejected": "(none)"},
    {"chosen": [{"role": "user", "content": "Write a line about rain."},
                {"role": "assistant", "content": "Rain taps on the roof."},
                {"role": "user", "content": "Now about snow."},
                {"role": "assistant", "content": "Snow falls without a sound."}],
     "rejected": [{"role": "user", "content": "Write a line about rain."},
                  {"role": "assistant", "content": "Rain taps on the roof."},
                  {"role": "user", "content": "Now about snow."},
                  {"role": "assistant", "content": "3 flakes."}]},
]
SYSTEM_RECORD = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
                 "chosen": "Hi.", "rejected": "Hello, how can I help you today?"}


def _reference(tokenizer, messages, turn_end_id, uses_bos):
    """The whole conversation as the tokenizer renders and tokenizes it, through the last turn end."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if uses_bos and ids[0] != tokenizer.bos_token_id:
        ids = [tokenizer.bos_token_id] + ids
    last = len(ids) - 1 - ids[::-1].index(turn_end_id)
    return ids[: last + 1]


def _records(family):
    return RECORDS + ([SYSTEM_RECORD] if family.supports_system else [])


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_plus_response_is_the_whole_conversation(name):
    family = families()[name]
    tokenizer = family.tokenizer
    turn_end_id = tokenizer.convert_tokens_to_ids(family.turn_end)
    assert turn_end_token_id(tokenizer) == turn_end_id
    for index, record in enumerate(_records(family)):
        pair = normalize_record(record, index)
        example = tokenize_pair(pair, tokenizer, SPEC, index)
        for response, key in ((pair.chosen, "chosen_ids"), (pair.rejected, "rejected_ids")):
            messages = pair.prompt + [{"role": "assistant", "content": response}]
            expected = _reference(tokenizer, messages, turn_end_id, family.uses_bos)
            got = example["prompt_ids"] + example[key]
            assert got == expected, (
                f"{name} record {index} {key}:\n  trained  {tokenizer.convert_ids_to_tokens(got)}\n"
                f"  expected {tokenizer.convert_ids_to_tokens(expected)}")
            bos = tokenizer.bos_token_id
            if family.uses_bos:
                assert got.count(bos) == 1 and got[0] == bos
            else:
                assert bos is None or bos not in got
            assert example[key][-1] == turn_end_id and example[key].count(turn_end_id) == 1
        assert example["prompt_trimmed"] == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_prompt_is_the_trained_prompt(name, tmp_path):
    """MT-Bench turns through ``BenchmarkRun``: each turn's prompt ids equal the trained prompt."""
    family = families()[name]
    tokenizer = family.tokenizer
    cases = []  # (user turns, earlier answers, record)
    for record in RECORDS:
        if isinstance(record["chosen"], list):
            turns = [m["content"] for m in record["chosen"] if m["role"] == "user"]
            answers = [m["content"] for m in record["chosen"][:-1] if m["role"] == "assistant"]
        else:
            turns, answers = [record["prompt"]], []
        cases.append((turns, answers, record))
    path = tmp_path / "question.jsonl"
    path.write_text("".join(json.dumps({"question_id": i, "category": "writing", "turns": turns}) + "\n"
                            for i, (turns, _, _) in enumerate(cases)))
    run = BenchmarkRun("mt_bench", BenchmarkConfig(data_path=str(path)), tmp_path, "model", "path")
    seen = 0
    for turn in range(run.max_turns):
        for request in run.requests(turn, tokenizer):
            turns, answers, record = cases[int(request.prompt_key)]
            if turn == len(turns) - 1:
                example = tokenize_pair(normalize_record(record, 0), tokenizer, SPEC)
                assert request.row["prompt_token_ids"] == example["prompt_ids"], (
                    f"{name} case {request.prompt_key}: generation "
                    f"{tokenizer.convert_ids_to_tokens(request.row['prompt_token_ids'])} vs trained "
                    f"{tokenizer.convert_ids_to_tokens(example['prompt_ids'])}")
                seen += 1
                run.receive(request, "unused")
            else:
                run.receive(request, answers[turn])
    assert seen == len(cases)


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_stops_at_the_trained_turn_end(name, tmp_path):
    """Both backends stop at the turn-end token training ends responses with, even when a base
    checkpoint's ``generation_config`` names only its EOS (``<|endoftext|>``, ``<|end_of_text|>``)."""
    family = families()[name]
    tokenizer = family.tokenizer
    turn_end_id = tokenizer.convert_tokens_to_ids(family.turn_end)
    base_model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=tokenizer.eos_token_id))
    assert turn_end_id in _eos_token_ids(base_model, tokenizer)
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["Hi."]}) + "\n")
    run = BenchmarkRun("mt_bench", BenchmarkConfig(data_path=str(path)), tmp_path, "model", "path")
    (request,) = run.requests(0, tokenizer)
    assert request.row["stop_token_ids"] == [turn_end_id]
    row = {"generation_id": "1", **request.row}
    assert vllm_backend.preprocess(row)["sampling_params"]["stop_token_ids"] == [turn_end_id]


def test_boundary_merge_is_split_like_trl_and_reported():
    """ChatML's prompt ends in "assistant\\n"; a response starting with "\\n" merges into "\\n\\n".

    The trained prompt then stops one token short of the generation prompt (TRL's
    ``common_prefix_length`` split), prompt + response still equal the whole conversation, and
    ``prompt_trimmed`` reports the one generation-prompt token left out.
    """
    family = families()["chatml"]
    tokenizer = family.tokenizer
    record = {"prompt": "Answer on a new line.", "chosen": "\nYes.", "rejected": "No."}
    pair = normalize_record(record, 0)
    example = tokenize_pair(pair, tokenizer, SPEC)
    turn_end_id = tokenizer.convert_tokens_to_ids(family.turn_end)
    for response, key in ((pair.chosen, "chosen_ids"), (pair.rejected, "rejected_ids")):
        expected = _reference(tokenizer, pair.prompt + [{"role": "assistant", "content": response}],
                              turn_end_id, family.uses_bos)
        assert example["prompt_ids"] + example[key] == expected
    assert example["prompt_trimmed"] == 1
    assert tokenizer.convert_ids_to_tokens(example["chosen_ids"][:1]) == ["ĊĊ"]

    from trl.experimental.orpo import ORPOTrainer

    prompt_text = tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
    answer = "\nYes.<|im_end|>"
    trl = ORPOTrainer.build_tokenized_answer(SimpleNamespace(processing_class=tokenizer), prompt_text, answer)
    assert (example["prompt_ids"], example["chosen_ids"]) == (list(trl["prompt_input_ids"]), list(trl["input_ids"]))


def test_truncation_keeps_bos_and_the_prompt_end():
    family = families()["sentencepiece"]
    tokenizer = family.tokenizer
    pair = normalize_record({"prompt": "word " * 200, "chosen": "Fine answer. " * 40, "rejected": "No."}, 0)
    full = tokenize_pair(pair, tokenizer, SPEC)
    cut = tokenize_pair(pair, tokenizer, TokenizeSpec(max_length=128, max_prompt_length=64))
    assert len(cut["prompt_ids"]) == 64 and cut["prompt_ids"][0] == tokenizer.bos_token_id
    assert cut["prompt_ids"][1:] == full["prompt_ids"][-63:]
    assert cut["chosen_ids"] == full["chosen_ids"][:64] and cut["truncated"]
    assert cut["rejected_ids"] == full["rejected_ids"]


@pytest.mark.parametrize("name", FAMILIES)
def test_split_matches_trl_build_tokenized_answer(name):
    """Parity with TRL's ORPO split (``enc(a + b)`` cut where ``enc(a)`` stops being its prefix),
    on the rendered prompt and the assistant turn's text through its end token."""
    from trl.experimental.orpo import ORPOTrainer

    family = families()[name]
    tokenizer = family.tokenizer
    trainer = SimpleNamespace(processing_class=tokenizer)
    for index, record in enumerate(_records(family)):
        pair = normalize_record(record, index)
        example = tokenize_pair(pair, tokenizer, SPEC, index)
        prompt_text = tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
        conversation = tokenizer.apply_chat_template(
            pair.prompt + [{"role": "assistant", "content": pair.chosen}], tokenize=False)
        answer = conversation[len(prompt_text):]
        answer = answer[: answer.rindex(family.turn_end) + len(family.turn_end)]
        trl = ORPOTrainer.build_tokenized_answer(trainer, prompt_text, answer)
        bos = [tokenizer.bos_token_id] if family.uses_bos and trl["prompt_input_ids"][:1] != [tokenizer.bos_token_id] \
            else []
        assert example["prompt_ids"] == bos + list(trl["prompt_input_ids"])
        assert example["chosen_ids"] == list(trl["input_ids"])


def test_template_errors_are_rejects_and_templates_without_turn_end_get_eos():
    from orpo.data import RecordError, RejectReason

    tokenizer = families()["sentencepiece"].tokenizer  # Mistral's template has no system role
    with pytest.raises(RecordError) as info:
        tokenize_pair(normalize_record(SYSTEM_RECORD, 3), tokenizer, SPEC, 3)
    assert (info.value.index, info.value.reason) == (3, RejectReason.MALFORMED_MESSAGES)
    assert "roles must alternate" in info.value.detail

    tokenizer = families()["zephyr"].tokenizer
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        assert turn_end_token_id(tokenizer) == tokenizer.eos_token_id
        example = tokenize_pair(normalize_record(RECORDS[0], 0), tokenizer, SPEC)
        assert example["chosen_ids"][-1] == tokenizer.eos_token_id
        assert example["chosen_ids"].count(tokenizer.eos_token_id) == 1
    finally:
        tokenizer.chat_template = original
    assert turn_end_token_id(tokenizer) == tokenizer.convert_tokens_to_ids("</s>")
