"""A tiny random-init Llama-style causal LM and a locally trained tokenizer, saved in HF format.

Tests and demos load it with ``from_pretrained(path)`` exactly as they would a real model, and
nothing touches a hub. ``python -m orpo.tiny OUT_DIR`` writes one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from orpo.chat import DEFAULT_CHAT_TEMPLATE
from orpo.synthetic import tokenizer_corpus

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]

def build_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the synthetic corpus (deterministic)."""
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=2048,
    )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # role headers are single tokens here
    return tokenizer


def tiny_llama_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                      tokenizer: PreTrainedTokenizerFast | None = None) -> LlamaConfig:
    """A Llama config of a few hundred thousand parameters."""
    special = {}
    if tokenizer is not None:
        special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 8 // 3,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        **special,
    )


def build_tiny_model(out_dir: str | Path, vocab_size: int = 1024, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, seed: int = 0) -> Path:
    """Write a random-init tiny Llama and its tokenizer to ``out_dir`` (safetensors); return it."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(vocab_size)
    config = tiny_llama_config(len(tokenizer), hidden_size, num_layers, num_heads, tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def ensure_tiny_model(out_dir: str | Path, **kwargs) -> Path:
    """Build the tiny model at ``out_dir`` unless one is already there."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").exists() or not (out_dir / "tokenizer.json").exists():
        build_tiny_model(out_dir, **kwargs)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4,
                        help="attention heads (vLLM's CPU engine needs hidden_size / heads >= 32)")
    args = parser.parse_args()
    path = build_tiny_model(args.out_dir, args.vocab_size, args.hidden_size, args.num_layers, args.num_heads)
    print(f"tiny model written to {path}")


if __name__ == "__main__":
    main()
