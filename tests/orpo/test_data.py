"""Records to tensors: the three shapes, every reject reason, BOS/EOS, truncation, collation."""

import pytest
import torch

from orpo.collate import PreferenceCollator, length_grouped_batches, random_batches
from orpo.data import (
    Columns,
    RecordError,
    RejectReason,
    TokenizeSpec,
    normalize_record,
    tokenize_pair,
    tokenize_records,
)
from orpo.logps import IGNORE_INDEX

SPEC = TokenizeSpec(max_length=128, max_prompt_length=64)


def test_string_record():
    pair = normalize_record({"prompt": "hi", "chosen": "a", "rejected": "b"}, 0)
    assert pair.prompt == [{"role": "user", "content": "hi"}] and (pair.chosen, pair.rejected) == ("a", "b")


def test_ultrafeedback_style_conversation():
    record = {
        "prompt": "ignored when the lists carry the prompt",
        "chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                     {"role": "assistant", "content": "bad"}],
    }
    pair = normalize_record(record, 3)
    assert [m["role"] for m in pair.prompt] == ["system", "user"]
    assert (pair.chosen, pair.rejected) == ("good", "bad")


def test_prompt_column_with_single_assistant_messages():
    record = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "x"}],
              "rejected": [{"role": "assistant", "content": "y"}]}
    assert normalize_record(record, 0).prompt == [{"role": "user", "content": "q"}]


def test_hh_rlhf_transcripts():
    base = "\n\nHuman: What is 2+2?\n\nAssistant: Let me think.\n\nHuman: Please answer.\n\nAssistant:"
    pair = normalize_record({"chosen": base + " It is 4.", "rejected": base + " No idea."}, 0)
    assert pair.prompt == [{"role": "user", "content": "What is 2+2?"},
                           {"role": "assistant", "content": "Let me think."},
                           {"role": "user", "content": "Please answer."}]
    assert (pair.chosen, pair.rejected) == ("It is 4.", "No idea.")


def test_column_mapping():
    cols = Columns(prompt="question", chosen="good", rejected="bad")
    pair = normalize_record({"question": "q", "good": "g", "bad": "b"}, 0, cols)
    assert pair.chosen == "g"


@pytest.mark.parametrize("record,field,reason", [
    ({"prompt": "p", "rejected": "r"}, "chosen", RejectReason.MISSING_FIELD),
    ({"prompt": "p", "chosen": "c", "rejected": None}, "rejected", RejectReason.MISSING_FIELD),
    ({"prompt": "p", "chosen": 3, "rejected": "r"}, "chosen", RejectReason.WRONG_TYPE),
    ({"prompt": "p", "chosen": "c", "rejected": ["r"]}, "rejected", RejectReason.WRONG_TYPE),
    ({"prompt": 7, "chosen": "c", "rejected": "r"}, "prompt", RejectReason.WRONG_TYPE),
    ({"prompt": "p", "chosen": "  ", "rejected": "r"}, "chosen", RejectReason.EMPTY_CHOSEN),
    ({"prompt": "p", "chosen": "c", "rejected": ""}, "rejected", RejectReason.EMPTY_REJECTED),
    ({"prompt": "p", "chosen": "same", "rejected": "same "}, "rejected", RejectReason.IDENTICAL_RESPONSES),
    ({"chosen": "no transcript", "rejected": "r"}, "prompt", RejectReason.MISSING_FIELD),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
     "rejected", RejectReason.PROMPT_MISMATCH),
    ({"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]},
     "chosen", RejectReason.MALFORMED_MESSAGES),
    ({"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "chosen", RejectReason.MALFORMED_MESSAGES),
    ({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
     "rejected", RejectReason.PROMPT_MISMATCH),
])
def test_bad_records_name_index_field_and_reason(record, field, reason):
    with pytest.raises(RecordError) as info:
        normalize_record(record, 41)
    assert (info.value.index, info.value.field, info.value.reason) == (41, field, reason)
    assert f"record 41: field '{field}'" in str(info.value)


def test_no_response_tokens_after_truncation(tiny_tokenizer):
    pair = normalize_record({"prompt": "word " * 200, "chosen": "c", "rejected": "r"}, 5)
    with pytest.raises(RecordError) as info:
        tokenize_pair(pair, tiny_tokenizer, TokenizeSpec(max_length=64, max_prompt_length=64), index=5)
    assert info.value.reason is RejectReason.NO_RESPONSE_TOKENS and info.value.index == 5


def test_bos_once_and_eos_ends_responses(tiny_tokenizer):
    pair = normalize_record({"prompt": "Write a note.", "chosen": "A calm day.", "rejected": "A busy day."}, 0)
    ex = tokenize_pair(pair, tiny_tokenizer, SPEC)
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    for response in ("chosen_ids", "rejected_ids"):
        full = ex["prompt_ids"] + ex[response]
        assert full.count(bos) == 1 and full[0] == bos
        assert ex[response][-1] == eos and ex[response].count(eos) == 1
    assert tiny_tokenizer.decode(ex["chosen_ids"], skip_special_tokens=True) == "A calm day."


def test_bos_not_doubled_when_template_writes_it_and_tokenizer_adds_it(tiny_tokenizer):
    from orpo.chat import with_single_bos

    bos = tiny_tokenizer.bos_token_id
    assert with_single_bos(tiny_tokenizer, [bos, bos, 7]) == [bos, 7]
    assert with_single_bos(tiny_tokenizer, [7]) == [bos, 7]


def test_truncation_prompt_left_responses_right(tiny_tokenizer):
    prompt = " ".join(f"w{i}" for i in range(100))
    pair = normalize_record({"prompt": prompt, "chosen": "x " * 100, "rejected": "short"}, 0)
    spec = TokenizeSpec(max_length=80, max_prompt_length=30)
    ex = tokenize_pair(pair, tiny_tokenizer, spec)
    assert len(ex["prompt_ids"]) == 30 and ex["prompt_ids"][0] == tiny_tokenizer.bos_token_id
    # Left truncation keeps the end of the prompt: the assistant header the model continues from.
    full_prompt = tokenize_pair(pair, tiny_tokenizer, TokenizeSpec(10_000, 10_000))["prompt_ids"]
    assert ex["prompt_ids"][1:] == full_prompt[-29:]
    assert len(ex["prompt_ids"]) + len(ex["chosen_ids"]) == 80
    assert ex["chosen_ids"][-1] != tiny_tokenizer.eos_token_id  # truncated: no EOS
    assert ex["rejected_ids"][-1] == tiny_tokenizer.eos_token_id and ex["truncated"]


def test_tokenize_records_collects_rejects_and_counts_add_up(tiny_tokenizer):
    records = [{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": "", "rejected": "r"},
               {"prompt": "p", "chosen": "c"}, {"prompt": "p", "chosen": "x", "rejected": "x"}]
    out = tokenize_records(records, tiny_tokenizer, SPEC, indices=[10, 11, 12, 13], collect_rejects=True)
    assert [ex["index"] for ex in out.examples] == [10]
    assert [(r["index"], r["reason"]) for r in out.rejects] == [
        (11, "empty_chosen"), (12, "missing_field"), (13, "identical_responses")]
    assert len(out.examples) + len(out.rejects) == len(records)
    with pytest.raises(RecordError, match="record 1: field 'chosen'"):
        tokenize_records(records, tiny_tokenizer, SPEC)


def test_collator_layout_and_padding_fraction():
    examples = [{"prompt_ids": [1, 5], "chosen_ids": [6, 2], "rejected_ids": [7, 8, 2], "index": 4},
                {"prompt_ids": [1, 5, 5], "chosen_ids": [9, 2], "rejected_ids": [2], "index": 9}]
    batch = PreferenceCollator(pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 0], [1, 5, 5, 9, 2], [1, 5, 7, 8, 2], [1, 5, 5, 2, 0]]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 6, 2, IGNORE_INDEX]
    assert batch["labels"][3].tolist() == [IGNORE_INDEX] * 3 + [2, IGNORE_INDEX]
    assert batch["index"].tolist() == [4, 9]
    assert batch["padding_fraction"].item() == pytest.approx(2 / 20)
    padded = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=8)(examples)
    assert padded["input_ids"].shape == (4, 8)
    assert padded["padding_fraction"].item() == pytest.approx(14 / 32)


def _padding_fraction(lengths, batches):
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / total


def test_length_grouping_cuts_padding_and_keeps_every_example():
    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 500, (4000,), generator=rng).tolist()
    grouped = length_grouped_batches(lengths, batch_size=8, seed=1)
    plain = random_batches(len(lengths), 8, seed=1)
    assert sorted(i for b in grouped for i in b) == list(range(len(lengths)))
    assert _padding_fraction(lengths, grouped) < 0.05 < _padding_fraction(lengths, plain)
    assert grouped == length_grouped_batches(lengths, batch_size=8, seed=1)
    assert grouped != length_grouped_batches(lengths, batch_size=8, seed=2)
