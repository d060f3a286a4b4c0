"""Reward-model win rate of model A against model B on the same prompts (ties count one half).

    python -m evaluation.reward_winrate --reward-model PATH a/alpaca_eval.jsonl b/alpaca_eval.jsonl

Any ``AutoModelForSequenceClassification`` with one output is a reward model here. A response
is scored in the reward model's own chat template when it has one; otherwise as the text pair
(prompt, response), the input format of reward models such as OpenAssistant's DeBERTa ones.
Scoring each prompt (``compare``) is kept apart from aggregating (``aggregate``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from orpo.chat import with_single_bos
from orpo.modeling import resolve_dtype

Message = dict[str, str]
PromptLike = str | list[Message]


class RewardModel:
    """A scalar reward per (prompt, response), from a sequence-classification model."""

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 8,
        max_length: int = 2048,
        trust_remote_code: bool = False,
    ):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                path, dtype=resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code,
                use_safetensors=True,  # never unpickle a checkpoint's weights
            )
            .to(self.device)
            .eval()
        )
        outputs = self.model.config.num_labels
        if outputs != 1:
            raise ValueError(f"{path}: a reward model has one output, this one has {outputs}")
        if self.model.config.pad_token_id is None:  # needed to find each sequence's last token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def input_ids(self, prompt: PromptLike, response: str) -> list[int]:
        """Token ids of one (prompt, response), truncated to ``max_length`` from the left."""
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            messages = _messages(prompt) + [{"role": "assistant", "content": response}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = with_single_bos(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            prompt_text = (
                prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
            )
            ids = tokenizer(prompt_text, response)["input_ids"]
        if len(ids) > self.max_length:  # the response end matters most to a reward model
            keep_bos = int(tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)
            ids = ids[:keep_bos] + ids[len(ids) - self.max_length + keep_bos :]
        return ids

    @torch.inference_mode()
    def score(self, prompts: Sequence[PromptLike], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response); batched by length, returned in input order."""
        encoded = [
            self.input_ids(prompt, response)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]))
        rewards = [0.0] * len(encoded)
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            batch = self.tokenizer.pad(
                {"input_ids": [encoded[i] for i in indices]}, return_tensors="pt"
            )
            logits = self.model(**batch.to(self.device)).logits  # (B, 1)
            for index, reward in zip(indices, logits[:, 0].float().tolist()):
                rewards[index] = reward
        return rewards


def _messages(prompt: PromptLike) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def compare(reward_a: float, reward_b: float, tie_tolerance: float = 0.0) -> float:
    """1 when A's reward is higher, 0 when lower, 0.5 when within ``tie_tolerance``."""
    if abs(reward_a - reward_b) <= tie_tolerance:
        return 0.5
    return 1.0 if reward_a > reward_b else 0.0


def aggregate(outcomes: Sequence[float]) -> dict[str, Any]:
    """Win rate of A = mean outcome; its standard error = sample std / sqrt(n) (None if n < 2)."""
    n = len(outcomes)
    if n == 0:
        return dict(win_rate=None, stderr=None, n=0, wins=0, ties=0, losses=0)
    win_rate = sum(outcomes) / n
    stderr = None
    if n > 1:
        variance = sum((outcome - win_rate) ** 2 for outcome in outcomes) / (n - 1)
        stderr = math.sqrt(variance / n)
    return dict(
        win_rate=win_rate,
        stderr=stderr,
        n=n,
        wins=sum(o == 1.0 for o in outcomes),
        ties=sum(o == 0.5 for o in outcomes),
        losses=sum(o == 0.0 for o in outcomes),
    )


def reward_win_rate(
    prompts: Sequence[PromptLike],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    reward_model: RewardModel,
    tie_tolerance: float = 0.0,
) -> dict[str, Any]:
    """Win rate of A over B under ``reward_model``, with the per-prompt rewards."""
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(
            f"{len(prompts)} prompts, {len(responses_a)} A and {len(responses_b)} B responses"
        )
    rewards_a = reward_model.score(prompts, responses_a)
    rewards_b = reward_model.score(prompts, responses_b)
    per_prompt = [
        dict(prompt=prompt, reward_a=a, reward_b=b, outcome=compare(a, b, tie_tolerance))
        for prompt, a, b in zip(prompts, rewards_a, rewards_b)
    ]
    return {**aggregate([row["outcome"] for row in per_prompt]), "per_prompt": per_prompt}


ID_FIELDS = ("key", "question_id", "instruction")


def load_paired_outputs(
    path_a: str | Path, path_b: str | Path
) -> tuple[list[list[Message]], list[str], list[str]]:
    """Prompts and both models' answers from two ``pipelines.generate`` JSONL files.

    Records are matched on their benchmark id; each record's ``messages`` gives the prompt (all
    but the last message) and the answer (the last one). For MT-Bench that is the second turn,
    in each model's own conversation.
    """
    records_a, records_b = _records_by_id(path_a), _records_by_id(path_b)
    shared = [key for key in records_a if key in records_b]
    if not shared:
        raise ValueError(f"{path_a} and {path_b} share no prompt ids")
    prompts = [records_a[key]["messages"][:-1] for key in shared]
    answers_a = [records_a[key]["messages"][-1]["content"] for key in shared]
    answers_b = [records_b[key]["messages"][-1]["content"] for key in shared]
    return prompts, answers_a, answers_b


def prompts_and_answers(path: str | Path) -> dict[str, tuple[list[Message], str]]:
    """Benchmark id -> (prompt messages, the model's answer) of a ``pipelines.generate`` JSONL file."""
    return {key: (record["messages"][:-1], record["messages"][-1]["content"])
            for key, record in _records_by_id(path).items()}


def paired_win_rate(rewards_a: dict[str, float], rewards_b: dict[str, float],
                    tie_tolerance: float = 0.0) -> dict[str, Any]:
    """Win rate of A over B from per-prompt rewards already computed (prompts matched by id)."""
    shared = [key for key in rewards_a if key in rewards_b]
    if not shared:
        raise ValueError("the two sets of rewards share no prompt ids")
    return aggregate([compare(rewards_a[key], rewards_b[key], tie_tolerance) for key in shared])


def _records_by_id(path: str | Path) -> dict[str, dict[str, Any]]:
    records = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            id_field = next(field for field in ID_FIELDS if field in record)
            records[str(record[id_field])] = record
    return records


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outputs_a", help="model A's generation JSONL")
    parser.add_argument("outputs_b", help="model B's generation JSONL (same benchmark)")
    parser.add_argument(
        "--reward-model", required=True, help="path or hub name of the reward model"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument(
        "--out", help="write the full result (with per-prompt rewards) here as JSON"
    )
    args = parser.parse_args(argv)
    prompts, answers_a, answers_b = load_paired_outputs(args.outputs_a, args.outputs_b)
    reward_model = RewardModel(
        args.reward_model,
        device=args.device,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    result = reward_win_rate(prompts, answers_a, answers_b, reward_model)
    if args.out:
        Path(args.out).write_text(
            json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    summary = {key: value for key, value in result.items() if key != "per_prompt"}
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
