"""Chat templating shared by training and generation, so both see the same prompt format."""

from __future__ import annotations

from typing import Any

Message = dict[str, str]

# Used when a tokenizer ships no chat template: the Zephyr format that the ORPO paper's
# Mistral-ORPO models were trained with. Each turn ends with the EOS token.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def chat_template(tokenizer: Any) -> str:
    """The tokenizer's own chat template, or ``DEFAULT_CHAT_TEMPLATE`` when it has none."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt text up to and including the assistant header the model continues from."""
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template(tokenizer), tokenize=False, add_generation_prompt=True
    )


def render_conversation(tokenizer: Any, messages: list[Message]) -> str:
    """A whole conversation, ending with the assistant's turn."""
    return tokenizer.apply_chat_template(
        messages, chat_template=chat_template(tokenizer), tokenize=False, add_generation_prompt=False
    )


def encode_prompt(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of the rendered prompt with the BOS token exactly once at the start."""
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    return with_single_bos(tokenizer, ids)


def with_single_bos(tokenizer: Any, ids: list[int]) -> list[int]:
    """Ensure ``ids`` starts with exactly one BOS when the tokenizer has one.

    Templates differ: some write the BOS text themselves, others rely on the tokenizer adding
    it; rendering with one and tokenizing with the other doubles it.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return list(ids)
    start = 0
    while start < len(ids) and ids[start] == bos:
        start += 1
    return [bos] + list(ids[start:])
