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
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError

from orpo.chat import (
    Message,
    render_conversation,
    render_prompt,
    turn_end_token_id,
    with_single_bos,
)

logger = logging.getLogger(__name__)


class RejectReason(str, enum.Enum):
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    MALFORMED_MESSAGES = "malformed_messages"
    EMPTY_CHOSEN = "empty_chosen"
    EMPTY_REJECTED = "empty_rejected"
    IDENTICAL_RESPONSES = "identical_responses"
    PROMPT_MISMATCH = "prompt_mismatch"
    NO_RESPONSE_TOKENS = "no_response_tokens"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    RECORD_TOO_LARGE = "record_too_large"


@dataclass(frozen=True)
class UnreadableRecord:
    """A source row that is not a record at all (bad bytes, broken JSON): kept, to be rejected."""

    reason: RejectReason
    detail: str


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

    ``prompt_ids + chosen_ids`` is the tokenization of the whole rendered conversation (prompt
    plus the chosen assistant turn) up to and including the turn's end token, and the same for
    ``rejected_ids`` (see ``encode_turns``). BOS appears once, at the start, when the tokenizer
    has one (``orpo.chat.with_single_bos``); the turn-end token ends every response that is not truncated.
    """
    prompt_ids, (chosen_ids, rejected_ids), prompt_trimmed = encode_turns(
        tokenizer, pair.prompt, [pair.chosen, pair.rejected], index, columns.prompt)

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
        "prompt_trimmed": prompt_trimmed,
    }


def encode_turns(tokenizer: Any, prompt: list[Message], responses: list[str], index: int = -1,
                 prompt_field: str = "prompt") -> tuple[list[int], list[list[int]], int]:
    """(prompt ids, one id list per response, prompt tokens trimmed) from whole conversations.

    Each response is rendered inside its conversation and the whole text is tokenized once, so
    the ids are those the model sees: SentencePiece tokenizers give a response's first word no
    word-start "▁" after ``[/INST]``, which tokenizing the response alone would. The prompt/response
    split is where the tokenized generation prompt (``orpo.chat.encode_prompt``, what the
    generation stage feeds the model) stops being a prefix of the tokenized conversations, as in
    TRL's ``DPOTrainer`` (``common_prefix_length``). Normally that is the whole generation
    prompt; when a token merges across the boundary (ByteLevel BPE with "assistant\n" followed
    by a response starting with "\n", say) the split moves left and the merged token is
    trained as part of the response, so ``prompt + response`` still equals the whole
    conversation's tokenization. The number of generation-prompt tokens left out of the
    trained prompt is returned (0 normally) so callers can report it: for such records the
    model is trained on a context that differs from the one it is prompted with.

    Each response ends right after the template's turn-end token (``turn_end_token_id``):
    separators the template writes after it (ChatML's "\n") are not trained on. A template
    that writes no turn-end token gets ``eos_token`` appended, so the model learns to stop.
    """
    try:
        prompt_text = render_prompt(tokenizer, prompt)
        texts = [render_conversation(tokenizer, prompt + [{"role": "assistant", "content": response}])
                 for response in responses]
    except TemplateError as error:
        raise RecordError(index, prompt_field, RejectReason.MALFORMED_MESSAGES,
                          f"the chat template rejects these messages: {error}") from None
    # One batched call: the fast tokenizer encodes the three texts in parallel.
    encoded = tokenizer([prompt_text, *texts], add_special_tokens=False)["input_ids"]
    generation_prompt = with_single_bos(tokenizer, encoded[0])
    conversations = [with_single_bos(tokenizer, ids) for ids in encoded[1:]]
    split = min(common_prefix_length(generation_prompt, ids) for ids in conversations)
    end = turn_end_token_id(tokenizer)
    response_ids = [_through_turn_end(ids[split:], end) for ids in conversations]
    trimmed = len(generation_prompt) - split
    if trimmed and not _warned_trimmed:
        _warn_trimmed(tokenizer, generation_prompt[split:])
    return generation_prompt[:split], response_ids, trimmed


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading ids ``a`` and ``b`` share."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _through_turn_end(ids: list[int], end: int | None) -> list[int]:
    """``ids`` cut right after their last turn-end token, or with the turn-end token appended."""
    if end is None:
        return ids
    if end in ids:
        return ids[: len(ids) - ids[::-1].index(end)]
    return ids + [end]


_warned_trimmed = False


def _warn_trimmed(tokenizer: Any, left_out: list[int]) -> None:
    global _warned_trimmed
    _warned_trimmed = True
    logger.warning(
        "the tokenized generation prompt is not a prefix of the tokenized conversation (a token merges "
        "across the prompt/response boundary, or the template renders the prompt differently); the "
        "trained prompt leaves out %r, which the generation stage feeds the model. Counted per record "
        "as 'prompt_trimmed'; shown once.", tokenizer.decode(left_out))


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
            if isinstance(record, UnreadableRecord):
                raise RecordError(index, "<record>", record.reason, record.detail)
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
