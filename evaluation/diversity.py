"""Lexical/semantic diversity of generations as in the ORPO paper (§6.3): PID and AID.

Both are mean cosine similarities of sentence embeddings, so LOWER MEANS MORE DIVERSE:

- per-input diversity (PID): for each prompt, the mean cosine similarity over all pairs of its
  sampled outputs; then the mean over prompts (prompts with fewer than 2 outputs are skipped);
- across-input diversity (AID): the mean cosine similarity over all pairs of outputs that answer
  different prompts.

    python -m evaluation.diversity --embedding-model PATH runs/gen/alpaca_eval.jsonl

Any sentence-transformers model given by path embeds; the encoder is a plain function
``texts -> (N, D) array``, so tests and other embedders plug in. Scoring one prompt
(``prompt_similarity``) is kept apart from aggregating (``per_input_diversity``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

Encoder = Callable[[Sequence[str]], np.ndarray]
"""Texts -> embeddings, shape (N, D)."""


def sentence_transformer_encoder(
    model_path: str, device: str | None = None, batch_size: int = 32
) -> Encoder:
    """An encoder from a sentence-transformers model directory (or hub name)."""
    from sentence_transformers import SentenceTransformer  # heavy; only when used

    model = SentenceTransformer(model_path, device=device)

    def encode(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            model.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=len(texts) > 10 * batch_size,
            )
        )

    return encode


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero, so their cosine with anything is 0)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)  # (N, D)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)  # (N, 1)
    return embeddings / np.where(norms > 0, norms, 1.0)


def sum_of_pairwise_dots(unit: np.ndarray) -> float:
    """sum_{i<j} u_i . u_j = (|sum_i u_i|^2 - sum_i |u_i|^2) / 2, without the (N, N) matrix."""
    total = unit.sum(axis=0)  # (D,)
    return float((total @ total - np.einsum("nd,nd->", unit, unit)) / 2)


def prompt_similarity(embeddings: np.ndarray) -> float | None:
    """Mean cosine similarity over all pairs of one prompt's outputs (None for < 2 outputs)."""
    count = len(embeddings)
    if count < 2:
        return None
    return sum_of_pairwise_dots(unit_rows(embeddings)) / (count * (count - 1) / 2)


def per_input_diversity(
    outputs_per_prompt: Sequence[Sequence[str]], encode: Encoder
) -> dict[str, Any]:
    """PID: the mean over prompts of ``prompt_similarity`` (lower = more diverse)."""
    embeddings = _embed_groups(outputs_per_prompt, encode)
    per_prompt = [prompt_similarity(group) for group in embeddings]
    scored = [value for value in per_prompt if value is not None]
    return dict(
        pid=float(np.mean(scored)) if scored else None, n_prompts=len(scored), per_prompt=per_prompt
    )


def across_input_diversity(
    outputs_per_prompt: Sequence[Sequence[str]], encode: Encoder
) -> dict[str, Any]:
    """AID: mean cosine similarity over all pairs of outputs to different prompts (lower = more
    diverse). With one output per prompt this is every pair of outputs."""
    groups = [unit_rows(group) for group in _embed_groups(outputs_per_prompt, encode) if len(group)]
    counts = [len(group) for group in groups]
    total = sum(counts)
    cross_pairs = total * (total - 1) / 2 - sum(count * (count - 1) / 2 for count in counts)
    if cross_pairs == 0:
        return dict(aid=None, n_pairs=0)
    cross_sum = sum_of_pairwise_dots(np.concatenate(groups)) - sum(
        sum_of_pairwise_dots(g) for g in groups
    )
    return dict(aid=cross_sum / cross_pairs, n_pairs=int(cross_pairs))


def diversity(outputs_per_prompt: Sequence[Sequence[str]], encode: Encoder) -> dict[str, Any]:
    """PID and AID together, embedding every output once."""
    cache: dict[str, np.ndarray] = {}

    def encode_once(texts: Sequence[str]) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if text not in cache]
        if missing:
            cache.update(zip(missing, encode(missing)))
        return np.stack([cache[text] for text in texts]) if texts else np.zeros((0, 0))

    per_input = per_input_diversity(outputs_per_prompt, encode_once)
    across = across_input_diversity(outputs_per_prompt, encode_once)
    return {**across, **per_input, "direction": "cosine similarity: lower is more diverse"}


def _embed_groups(outputs_per_prompt: Sequence[Sequence[str]], encode: Encoder) -> list[np.ndarray]:
    flat = [text for outputs in outputs_per_prompt for text in outputs]
    embeddings = np.asarray(encode(flat)) if flat else np.zeros((0, 0))
    groups, start = [], 0
    for outputs in outputs_per_prompt:
        groups.append(embeddings[start : start + len(outputs)])
        start += len(outputs)
    return groups


def load_outputs(path: str | Path) -> list[list[str]]:
    """Each record's sampled outputs from a ``pipelines.generate`` JSONL file (``outputs``, or the
    last-turn answers of MT-Bench ``choices``)."""
    groups = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "outputs" in record:
            groups.append(list(record["outputs"]))
        else:
            groups.append([choice["turns"][-1] for choice in record["choices"]])
    return groups


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outputs", help="generation JSONL with several samples per prompt")
    parser.add_argument("--embedding-model", required=True, help="sentence-transformers model path")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--out", help="write the result (with per-prompt similarities) here as JSON"
    )
    args = parser.parse_args(argv)
    result = diversity(
        load_outputs(args.outputs), sentence_transformer_encoder(args.embedding_model, args.device)
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps({key: value for key, value in result.items() if key != "per_prompt"}, indent=2)
    )
    return result


if __name__ == "__main__":
    main()
