"""Preference records to token ids: normalise the three record shapes, validate, tokenize, truncate.

Accepted shapes (column names are mapped by ``Columns``):
- strings: ``{prompt, chosen, rejected}``;
- conversational (UltraFeedback-binarized style): ``chosen`` / ``rejected`` are lists of
  ``{role, content}`` ending with the assistant turn; the prompt is the shared message prefix,
  or the ``prompt`` column (a string or a message list) when the lists hold only the answer;
- HH-RLHF style: ``chosen`` / ``rejected`` are full ``\\n\\nHuman: ... \\n\\nAssistant: ...``
  transcripts and no prompt column; the shared prefix up to the last assistant turn is the prompt.

A record that cannot be used raises ``RecordError`` naming the record index, the field and a
``RejectReason``; ``tokenize_records(..., collect_rejects=True)`` collects them instead. Nothing
is dropped silently.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orpo.chat import Message, encode_prompt, render_conversation, render_prompt


class RejectReason(str, enum.Enum):
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    MALFORMED_MESSAGES = "malformed_messages"
    EMPTY_CHOSEN = "empty_chosen"
    EMPTY_REJECTED = "empty_rejected"
    IDENTICAL_RESPONSES = "identical_responses"
    PROMPT_MISMATCH = "prompt_mismatch"
    NO_RESPONSE_TOKENS = "no_response_tokens"


class RecordError(ValueError):
    """A record that cannot be trained on: which record, which field, and why."""

    def __init__(self, index: int, field: str, reason: RejectReason, detail: str):
        self.index, self.field, self.reason, self.detail = index, field, reason, detail
        super().__init__(f"record {index}: field '{field}': {reason.value}: {detail}")

    def to_reject(self) -> dict[str, Any]:
        """A JSON-ready row for ``rejects.jsonl``."""
        return {"index": self.index, "field": self.field, "reason": self.reason.value, "detail": self.detail}


@dataclass
class Columns:
    """Which record columns hold the prompt and the two responses."""

    prompt: str = "prompt"
    """Prompt column: a string, a message list, or absent (HH-RLHF / full conversations)."""
    chosen: str = "chosen"
    """Preferred response: a string or a message list ending with the assistant turn."""
    rejected: str = "rejected"
    """Dispreferred response, same shape as ``chosen``."""


@dataclass
class PreferencePair:
    """A validated record: the prompt as messages and the two assistant responses."""

    prompt: list[Message]
    chosen: str
    rejected: str


@dataclass
class TokenizedBatch:
    """Examples ready for ``orpo.collate`` plus the records rejected on the way."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)


def normalize_record(record: Mapping[str, Any], index: int, columns: Columns = Columns()) -> PreferencePair:
    """Turn any accepted record shape into a ``PreferencePair`` or raise ``RecordError``."""
    chosen = _required(record, columns.chosen, index)
    rejected = _required(record, columns.rejected, index)
    prompt_value = record.get(columns.prompt)
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt_value is None:
            prompt, chosen, rejected = _split_transcripts(chosen, rejected, index, columns)
        else:
            prompt = _prompt_messages(prompt_value, index, columns.prompt)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        chosen_context, chosen = _split_messages(chosen, index, columns.chosen)
        rejected_context, rejected = _split_messages(rejected, index, columns.rejected)
        if chosen_context != rejected_context:
            raise RecordError(index, columns.rejected, RejectReason.PROMPT_MISMATCH,
                              "chosen and rejected conversations differ before the last assistant turn")
        if chosen_context:
            prompt = chosen_context
        elif prompt_value is not None:
            prompt = _prompt_messages(prompt_value, index, columns.prompt)
        else:
            raise RecordError(index, columns.prompt, RejectReason.MISSING_FIELD,
                              "responses are single assistant messages and there is no prompt column")
    else:
        bad = columns.chosen if not isinstance(chosen, (str, list)) else columns.rejected
        raise RecordError(index, bad, RejectReason.WRONG_TYPE,
                          f"chosen is {type(chosen).__name__}, rejected is {type(rejected).__name__}; "
                          "both must be strings or both message lists")
    if not chosen.strip():
        raise RecordError(index, columns.chosen, RejectReason.EMPTY_CHOSEN, "chosen response is empty")
    if not rejected.strip():
        raise RecordError(index, columns.rejected, RejectReason.EMPTY_REJECTED, "rejected response is empty")
    if chosen.strip() == rejected.strip():
        raise RecordError(index, columns.rejected, RejectReason.IDENTICAL_RESPONSES,
                          "chosen and rejected responses are identical")
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected)


def _required(record: Mapping[str, Any], name: str, index: int) -> Any:
    if name not in record or record[name] is None:
        raise RecordError(index, name, RejectReason.MISSING_FIELD, f"no '{name}' in record")
    return record[name]


def _prompt_messages(value: Any, index: int, name: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return [_message(m, index, name) for m in value]
    raise RecordError(index, name, RejectReason.WRONG_TYPE,
                      f"prompt must be a string or a message list, got {type(value).__name__}")


def _message(value: Any, index: int, name: str) -> Message:
    if not isinstance(value, Mapping) or not isinstance(value.get("role"), str) \
            or not isinstance(value.get("content"), str):
        raise RecordError(index, name, RejectReason.MALFORMED_MESSAGES,
                          f"each message needs string 'role' and 'content', got {value!r:.80}")
    return {"role": value["role"], "content": value["content"]}


def _split_messages(value: list[Any], index: int, name: str) -> tuple[list[Message], str]:
    messages = [_message(m, index, name) for m in value]
    if not messages or messages[-1]["role"] != "assistant":
        raise RecordError(index, name, RejectReason.MALFORMED_MESSAGES,
                          "the conversation must end with an assistant message")
    return messages[:-1], messages[-1]["content"]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _split_transcripts(chosen: str, rejected: str, index: int, columns: Columns) -> tuple[list[Message], str, str]:
    chosen_prompt, chosen_response = _split_transcript(chosen, index, columns.chosen, columns.prompt)
    rejected_prompt, rejected_response = _split_transcript(rejected, index, columns.rejected, columns.prompt)
    if chosen_prompt != rejected_prompt:
        raise RecordError(index, columns.rejected, RejectReason.PROMPT_MISMATCH,
                          "chosen and rejected transcripts differ before the last assistant turn")
    return chosen_prompt, chosen_response, rejected_response


def _split_transcript(text: str, index: int, name: str, prompt_name: str) -> tuple[list[Message], str]:
    """HH-RLHF transcript -> (prompt messages, final assistant response)."""
    parts = _HH_TURN.split(text)  # [preamble, role, content, role, content, ...]
    if len(parts) < 5 or parts[0].strip() or parts[-2] != "Assistant":
        raise RecordError(index, prompt_name, RejectReason.MISSING_FIELD,
                          f"no '{prompt_name}' column, and '{name}' is not an HH-RLHF transcript "
                          "('\\n\\nHuman: ...\\n\\nAssistant: ...')")
    turns = [{"role": _HH_ROLES[role], "content": content.strip()}
             for role, content in zip(parts[1:-2:2], parts[2:-2:2])]
    return turns, parts[-1].strip()


@dataclass
class TokenizeSpec:
    """Length limits for tokenized pairs."""

    max_length: int = 1024
    """Longest prompt + response, in tokens; responses are cut from the right to fit."""
    max_prompt_length: int = 512
    """Longest prompt, in tokens, when prompt + response exceeds ``max_length``; cut from the left."""


def tokenize_pair(pair: PreferencePair, tokenizer: Any, spec: TokenizeSpec, index: int = -1,
                  columns: Columns = Columns()) -> dict[str, Any]:
    """Token ids of the prompt and both responses, truncated to ``spec``.

    BOS appears once (at the prompt's start); EOS ends every response that is not truncated.
    """
    prompt_text = render_prompt(tokenizer, pair.prompt)
    prompt_ids = encode_prompt(tokenizer, pair.prompt)
    chosen_ids = _response_ids(tokenizer, pair.prompt, prompt_text, pair.chosen)
    rejected_ids = _response_ids(tokenizer, pair.prompt, prompt_text, pair.rejected)

    truncated = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > spec.max_length
    if truncated and len(prompt_ids) > spec.max_prompt_length:
        keep_bos = tokenizer.bos_token_id is not None and prompt_ids[0] == tokenizer.bos_token_id
        head = prompt_ids[:1] if keep_bos else []
        prompt_ids = head + prompt_ids[len(prompt_ids) - (spec.max_prompt_length - len(head)):]
    room = spec.max_length - len(prompt_ids)
    chosen_ids, rejected_ids = chosen_ids[:max(room, 0)], rejected_ids[:max(room, 0)]
    for name, ids in ((columns.chosen, chosen_ids), (columns.rejected, rejected_ids)):
        if not ids:
            raise RecordError(index, name, RejectReason.NO_RESPONSE_TOKENS,
                              f"no response tokens left after truncation to max_length={spec.max_length} "
                              f"(prompt has {len(prompt_ids)} tokens)")
    return {
        "index": index,
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        "length": len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)),
        "truncated": truncated,
    }


def _response_ids(tokenizer: Any, prompt: list[Message], prompt_text: str, response: str) -> list[int]:
    """The assistant turn as the chat template writes it, cut right after its EOS."""
    full_text = render_conversation(tokenizer, prompt + [{"role": "assistant", "content": response}])
    text = full_text[len(prompt_text):] if full_text.startswith(prompt_text) else response
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in ids:
        # Templates may write separators after EOS (e.g. "</s>\n"); the turn ends at EOS.
        return ids[: len(ids) - ids[::-1].index(eos)]
    return ids + [eos]


def assign_split(source: str, row: int, eval_fraction: float, seed: int) -> str:
    """``train`` or ``eval`` by a seeded hash of the record's source position (label and row).

    The one train/eval split of both launchers: stable across runs, workers and file order.
    """
    digest = hashlib.blake2b(f"{seed}:{source}:{row}".encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "little") / 2**64 < eval_fraction else "train"


def tokenize_records(
    records: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    spec: TokenizeSpec,
    columns: Columns = Columns(),
    indices: Iterable[int] | None = None,
    collect_rejects: bool = False,
) -> TokenizedBatch:
    """Normalise and tokenize records; each gets its source index (``indices`` or its position).

    With ``collect_rejects`` a bad record goes to ``rejects`` with its reason; otherwise its
    ``RecordError`` propagates.
    """
    out = TokenizedBatch()
    index_iter = iter(indices) if indices is not None else None
    for position, record in enumerate(records):
        index = next(index_iter) if index_iter is not None else position
        try:
            if not isinstance(record, Mapping):
                raise RecordError(index, "<record>", RejectReason.WRONG_TYPE,
                                  f"a record must be a JSON object, got {type(record).__name__}")
            pair = normalize_record(record, index, columns)
            out.examples.append(tokenize_pair(pair, tokenizer, spec, index, columns))
        except RecordError as error:
            if not collect_rejects:
                raise
            out.rejects.append(error.to_reject())
    return out
