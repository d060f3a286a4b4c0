"""transformers backend: a callable class for Ray Data ``map_batches``; left-pads and generates."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from orpo.chat import turn_end_token_id
from pipelines.generation.benchmarks import GREEDY_BELOW, answer_text
from pipelines.generation.config import HFBackendConfig

DECODING_COLUMNS = ("temperature", "top_p", "max_new_tokens", "seed")


class HFGenerator:
    """Generates one answer per request row with a transformers causal LM.

    Input columns: ``generation_id``, ``prompt_token_ids`` (already templated, see
    ``orpo.chat.encode_prompt``), ``temperature``, ``top_p``, ``max_new_tokens``, ``seed``.
    Output columns: ``generation_id``, ``text``, ``num_generated_tokens``, ``token_ids`` (the
    generated ids, up to and including the stop token, as vLLM reports them).

    Rows of a batch that share decoding settings go through one ``generate`` call, left-padded
    so every prompt ends where generation starts. Sampled rows reseed torch with their seed
    first: outputs are reproducible for the same seed and batch composition.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        use_gpu: bool = False,
        trust_remote_code: bool = False,
    ):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(
            model_path, trust_remote_code=trust_remote_code
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            # Padding is masked, so EOS is a safe stand-in (Llama/Mistral ship no pad token).
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(
                model_path,
                dtype=resolve_dtype(dtype, self.device),
                trust_remote_code=trust_remote_code,
                use_safetensors=True,  # never unpickle a checkpoint's weights
            )
            .to(self.device)
            .eval()
        )
        self.eos_token_ids = _eos_token_ids(self.model, self.tokenizer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = [
            {name: _python(value) for name, value in zip(batch, values)}
            for values in zip(*batch.values())
        ]
        texts: dict[str, str] = {}
        tokens: dict[str, list[int]] = {}
        by_decoding = sorted(rows, key=_decoding_of)
        for decoding, group in itertools.groupby(by_decoding, key=_decoding_of):
            group = list(group)
            for row, (text, ids) in zip(
                group, self.generate([row["prompt_token_ids"] for row in group], *decoding)
            ):
                texts[row["generation_id"]] = text
                tokens[row["generation_id"]] = ids
        ids = [row["generation_id"] for row in rows]
        return {
            "generation_id": ids,
            "text": [texts[i] for i in ids],
            "num_generated_tokens": [len(tokens[i]) for i in ids],
            "token_ids": [tokens[i] for i in ids],
        }

    @torch.inference_mode()
    def generate(
        self, prompts: list[Any], temperature: float, top_p: float, max_new_tokens: int, seed: int
    ) -> list[tuple[str, list[int]]]:
        """(answer text, generated ids) for each prompt, all with the same settings."""
        padded = self.tokenizer.pad(
            {"input_ids": [list(ids) for ids in prompts]},
            padding=True,
            return_tensors="pt",
        ).to(self.device)  # input_ids, attention_mask: (B, T), left-padded
        greedy = temperature < GREEDY_BELOW
        generation_config = GenerationConfig(
            max_new_tokens=int(max_new_tokens),
            do_sample=not greedy,
            # Every value explicit: unset (None) ones are filled from the checkpoint's
            # generation_config.json, which must not change a benchmark's decoding. top_k=0 turns
            # off transformers' default top-k of 50 (vLLM's default is off too).
            temperature=1.0 if greedy else float(temperature),
            top_p=1.0 if greedy else float(top_p),
            top_k=None if greedy else 0,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if not greedy:
            torch.manual_seed(int(seed))
        output = self.model.generate(**padded, generation_config=generation_config)
        new_tokens = output[:, padded["input_ids"].shape[1] :].tolist()  # (B, new)
        return [self._decode(tokens) for tokens in new_tokens]

    def _decode(self, tokens: list[int]) -> tuple[str, list[int]]:
        end = next(
            (index + 1 for index, token in enumerate(tokens) if token in self.eos_token_ids),
            len(tokens),
        )
        kept = tokens[:end]
        return answer_text(self.tokenizer, kept), kept


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on GPUs that support it, else float32 (as in training)."""
    if name == "auto":
        return (
            torch.bfloat16
            if device.type == "cuda" and torch.cuda.is_bf16_supported()
            else torch.float32
        )
    return getattr(torch, name)


def _decoding_of(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[column] for column in DECODING_COLUMNS)


def _python(value: Any) -> Any:
    """numpy scalars and arrays (as Ray Data batches hold them) as plain Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def _eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The checkpoint's EOS ids, the tokenizer's EOS and the chat template's turn-end token.

    A model trained from a base checkpoint on a ChatML / Llama-3 template learned to end its
    turn with ``<|im_end|>`` / ``<|eot_id|>``, which the base ``generation_config`` does not list.
    """
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    ids = [token for token in ids if token is not None]
    for token in (tokenizer.eos_token_id, turn_end_token_id(tokenizer)):
        if token is not None and token not in ids:
            ids.append(token)
    return ids


def map_batches_kwargs(
    cfg: HFBackendConfig, model_path: str, trust_remote_code: bool
) -> dict[str, Any]:
    """Arguments of ``Dataset.map_batches`` that run ``HFGenerator`` in an actor pool."""
    return dict(
        fn_constructor_kwargs=dict(
            model_path=model_path,
            dtype=cfg.dtype,
            use_gpu=cfg.num_gpus > 0,
            trust_remote_code=trust_remote_code,
        ),
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
    )
