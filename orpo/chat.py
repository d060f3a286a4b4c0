"""Chat templating shared by training and generation, so both see the same prompt format."""

from __future__ import annotations

import weakref
from typing import Any

from jinja2 import TemplateError

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


# A plain word no template rewrites (no whitespace to trim, no markup).
_PROBE_ANSWER = "Probeanswer"
_TURN_END_CACHE: weakref.WeakKeyDictionary[Any, tuple[str, int | None]] = weakref.WeakKeyDictionary()


def turn_end_token_id(tokenizer: Any) -> int | None:
    """The token that ends an assistant turn in this tokenizer's chat template.

    It is not always ``eos_token``: ChatML templates end a turn with ``<|im_end|>`` and Llama-3's
    with ``<|eot_id|>``, while a base model's tokenizer may name ``<|endoftext|>`` /
    ``<|end_of_text|>`` as EOS. It is read off the template: the first special token that the
    template writes after an assistant message. ``eos_token_id`` when the template writes no
    special token there (or cannot render the probe conversation); ``None`` when neither exists.
    """
    template = chat_template(tokenizer)
    try:
        cached = _TURN_END_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable or hashable: no cache
        cached = None
    if cached is not None and cached[0] == template:
        return cached[1]
    token = tokenizer.eos_token_id
    try:
        text = render_conversation(tokenizer, [{"role": "user", "content": "Probequestion"},
                                               {"role": "assistant", "content": _PROBE_ANSWER}])
    except TemplateError:  # a template that rejects the probe conversation: keep EOS
        text = ""
    if _PROBE_ANSWER in text:
        suffix = text[text.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER):]
        special = set(tokenizer.all_special_ids) | {
            index for index, added in getattr(tokenizer, "added_tokens_decoder", {}).items() if added.special}
        written = [i for i in tokenizer(suffix, add_special_tokens=False)["input_ids"] if i in special]
        if written:
            token = written[0]
    try:
        _TURN_END_CACHE[tokenizer] = (template, token)
    except TypeError:
        pass
    return token
