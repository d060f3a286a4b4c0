"""Test support: one locally trained tokenizer per chat-tokenizer family real runs meet.

Nothing comes from a hub. Each family copies the real tokenizer's pipeline (pre-tokenizer, byte
fallback, BOS/EOS handling, special tokens) and the real model's chat template; the vocabularies
are small BPEs trained on the synthetic records plus the shared benchmark prompts (read by path,
never copied into the repo).

- ``sentencepiece``: Llama-2 / Mistral-v0.1 style ``LlamaTokenizerFast`` ("▁" pieces, Metaspace
  with ``prepend_scheme="first"`` and ``split=False``, byte fallback ``<0x..>`` pieces, BOS added by
  the tokenizer), with the Mistral-7B-Instruct chat template (``[INST] q [/INST]answer</s>``).
- ``chatml``: Qwen2 style (ByteLevel BPE with Qwen2's split regex, no BOS, ``<|im_start|>`` /
  ``<|im_end|>``), the Qwen2-Instruct template. Its EOS is ``<|endoftext|>`` as in the Qwen2 *base*
  tokenizer, so the turn's end (``<|im_end|>``) is not ``eos_token``.
- ``llama3``: Llama-3 style (ByteLevel BPE with Llama-3's split regex; ``<|begin_of_text|>`` written
  by the template *and* added by the tokenizer's post-processor; header tokens; ``<|eot_id|>``
  ends the turn, EOS is ``<|end_of_text|>`` as first shipped), the Llama-3-8B-Instruct template.
- ``zephyr``: the project's own tiny tokenizer (``orpo.tiny``) with ``orpo.chat.DEFAULT_CHAT_TEMPLATE``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

from orpo.synthetic import tokenizer_corpus

SHARED_BENCHMARKS = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks"

# mistralai/Mistral-7B-Instruct-v0.2 tokenizer_config.json (v0.1's differs only by a space after EOS).
MISTRAL_INSTRUCT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# Qwen/Qwen2-7B-Instruct tokenizer_config.json.
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# The pre-tokenizer split patterns of the Qwen2 and Llama-3 tokenizer.json files.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class Family:
    """A tokenizer and what the tests expect of it."""

    name: str
    tokenizer: Any
    turn_end: str
    """The token that ends an assistant turn in this family's template."""
    uses_bos: bool
    """Whether sequences start with BOS (written by the template or added by the tokenizer)."""
    supports_system: bool


def corpus() -> list[str]:
    """Training text: the synthetic records and, when present, the shared benchmark prompts."""
    texts = list(tokenizer_corpus(n=1500))
    mt_bench = SHARED_BENCHMARKS / "mt_bench" / "question.jsonl"
    ifeval = SHARED_BENCHMARKS / "ifeval" / "input_data.jsonl"
    if mt_bench.exists():
        texts += [turn for line in mt_bench.read_text().splitlines() if line.strip()
                  for turn in json.loads(line)["turns"]]
    if ifeval.exists():
        texts += [json.loads(line)["prompt"] for line in ifeval.read_text().splitlines() if line.strip()]
    return texts


def sentencepiece_tokenizer(vocab_size: int = 2000) -> LlamaTokenizerFast:
    """Llama-2 layout: ``<unk>``, ``<s>``, ``</s>`` at 0-2, the 256 byte pieces, then learned pieces."""
    trainer_backend = Tokenizer(models.BPE(unk_token="<unk>"))
    # SentencePiece never merges across whitespace; train on "▁"-split words, encode unsplit (as Llama).
    trainer_backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    trainer_backend.train_from_iterator(corpus() + [MISTRAL_INSTRUCT_TEMPLATE], trainer=trainer)
    model = json.loads(trainer_backend.to_str())["model"]
    learned = sorted(((token, index) for token, index in model["vocab"].items()
                      if token not in ("<unk>", "<s>", "</s>")), key=lambda item: item[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{byte:02X}>": 3 + byte for byte in range(256)})
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    tokenizer = LlamaTokenizerFast(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
                                   model_max_length=4096)
    tokenizer.chat_template = MISTRAL_INSTRUCT_TEMPLATE
    return tokenizer


def _byte_level_tokenizer(split: str, specials: list[str], vocab_size: int) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Newline runs as in chat transcripts, so "\n\n" is one token as in the real vocabularies.
    backend.train_from_iterator(corpus() + ["a\n\nb\n\n\nc\n"] * 50, trainer=trainer)
    return backend


def chatml_tokenizer(vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_byte_level_tokenizer(QWEN2_SPLIT, specials, vocab_size),
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=specials[1:], model_max_length=4096)
    tokenizer.chat_template = QWEN2_TEMPLATE
    return tokenizer


def llama3_tokenizer(vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    backend = _byte_level_tokenizer(LLAMA3_SPLIT, specials, vocab_size)
    bos = backend.token_to_id("<|begin_of_text|>")
    # As in Llama-3's tokenizer.json: the tokenizer adds BOS too, so template + tokenizer doubles it.
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                        eos_token="<|end_of_text|>", additional_special_tokens=specials[2:],
                                        model_max_length=4096)
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


def zephyr_tokenizer() -> PreTrainedTokenizerFast:
    from orpo.tiny import build_tokenizer

    return build_tokenizer()


@functools.cache
def families() -> dict[str, Family]:
    """All four families (built once per process; a few seconds)."""
    return {
        "sentencepiece": Family("sentencepiece", sentencepiece_tokenizer(), "</s>", True, False),
        "chatml": Family("chatml", chatml_tokenizer(), "<|im_end|>", False, True),
        "llama3": Family("llama3", llama3_tokenizer(), "<|eot_id|>", True, True),
        "zephyr": Family("zephyr", zephyr_tokenizer(), "</s>", True, True),
    }
