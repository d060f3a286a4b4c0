"""One benchmark's generation state: what is done, which requests are next, where answers go.

Multi-turn prompts (MT-Bench) are answered one turn per pass, each turn conditioned on the
model's own earlier answers. Finished prompts are appended to ``<benchmark>.jsonl``; answers to
earlier turns go to ``<benchmark>.turns.jsonl`` so an interrupted run resumes from them.
"""

from __future__ import annotations

import hashlib

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orpo.chat import encode_prompt, turn_end_token_id
from pipelines.generation.benchmarks import (
    ID_FIELDS,
    Decoding,
    Prompt,
    conversation,
    load_prompts,
    output_record,
    resolve_decoding,
)
from pipelines.generation.config import BenchmarkConfig
from pipelines.generation.store import append_record, load_records, sort_records

logger = logging.getLogger(__name__)


@dataclass
class PendingPrompt:
    """A prompt without a finished record yet."""

    prompt: Prompt
    decoding: Decoding
    answers: list[list[str]]
    """``answers[sample][turn]``: the turns answered so far, per sample."""
    arrived: dict[int, str] = field(default_factory=dict)
    """Answers to the current turn that have arrived, by sample index."""

    @property
    def turns_done(self) -> int:
        return min(len(sample) for sample in self.answers)


@dataclass(frozen=True)
class Request:
    """One answer to generate: a row for the backends plus where the answer belongs."""

    row: dict[str, Any]
    """``prompt_token_ids``, ``stop_token_ids``, ``temperature``, ``top_p``, ``max_new_tokens``, ``seed``."""
    prompt_key: str
    turn: int
    sample_index: int


def model_identity(model_path: str) -> str:
    """What identifies the weights that answer: a local checkpoint's config and weight files
    (content hash of the config, size and modification time of the weights), or the hub name."""
    path = Path(model_path)
    if not path.is_dir():
        return model_path
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name.endswith((".json", ".safetensors", ".bin")):
            stat = file.stat()
            digest.update(file.name.encode())
            digest.update(file.read_bytes() if file.suffix == ".json" else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{path.resolve()}@{digest.hexdigest()[:16]}"


class BenchmarkRun:
    """The state of one benchmark's outputs in ``output_dir``."""

    def __init__(
        self, name: str, cfg: BenchmarkConfig, output_dir: Path, model_name: str, model_path: str
    ):
        self.name = name
        self.model_name = model_name
        self.model_path = model_path
        self.model_identity = model_identity(model_path)
        self.output_path = output_dir / f"{name}.jsonl"
        self.turns_path = output_dir / f"{name}.turns.jsonl"
        self.meta_path = output_dir / f"{name}.meta.json"
        self.prompts = load_prompts(name, cfg)
        self.started_at = datetime.now(timezone.utc).isoformat()
        self.generated = 0
        done = load_records(self.output_path, self.record_key)
        self.reused = sum(prompt.key in done for prompt in self.prompts)
        decodings = {
            prompt.key: resolve_decoding(name, cfg.decoding, prompt.category)
            for prompt in self.prompts
        }
        self.pending: dict[str, PendingPrompt] = {
            prompt.key: PendingPrompt(
                prompt,
                decodings[prompt.key],
                [[] for _ in range(decodings[prompt.key].num_samples)],
            )
            for prompt in self.prompts
            if prompt.key not in done
        }
        self._check_reusable(done, decodings)
        self._restore_earlier_turns()

    def _check_reusable(self, done: dict[str, dict[str, Any]], decodings: dict[str, Any]) -> None:
        """Refuse to mix answers of another model or other decoding settings into this run's."""
        other_model = sorted({str(done[key].get("model_identity")) for key in done
                              if done[key].get("model_identity") != self.model_identity})
        other_decoding = sum(done[key].get("decoding") != decodings[key].as_dict()
                             for key in done if key in decodings)
        if other_model or other_decoding:
            what = (f"by another model ({', '.join(other_model)[:200]}; this run's is {self.model_identity})"
                    if other_model else f"with other decoding settings ({other_decoding} records)")
            raise ValueError(f"{self.output_path} holds answers generated {what}; use another output_dir, "
                             "or delete the file to generate again")

    def record_key(self, record: dict[str, Any]) -> str:
        return str(record[ID_FIELDS[self.name]])

    @property
    def max_turns(self) -> int:
        return max((len(prompt.turns) for prompt in self.prompts), default=0)

    def requests(self, turn: int, tokenizer: Any) -> list[Request]:
        """Requests for turn ``turn`` of every pending prompt whose earlier turns are answered."""
        requests = []
        # The turn ends where training ended it, which need not be EOS (ChatML, Llama-3).
        turn_end = turn_end_token_id(tokenizer)
        stop_token_ids = [turn_end] if turn_end is not None else []
        for key, pending in self.pending.items():
            if len(pending.prompt.turns) <= turn or pending.turns_done != turn:
                continue
            pending.arrived.clear()
            for sample_index, answers in enumerate(pending.answers):
                messages = conversation(pending.prompt.turns[: turn + 1], answers)
                decoding = pending.decoding
                row = dict(
                    prompt_token_ids=encode_prompt(tokenizer, messages),
                    stop_token_ids=stop_token_ids,
                    temperature=decoding.temperature,
                    top_p=decoding.top_p,
                    max_new_tokens=decoding.max_new_tokens,
                    seed=decoding.sample_seed(sample_index),
                )
                requests.append(Request(row, key, turn, sample_index))
        return requests

    def receive(self, request: Request, text: str) -> None:
        """Store one answer; once all samples of a turn are in, write them out."""
        pending = self.pending[request.prompt_key]
        pending.arrived[request.sample_index] = text
        if len(pending.arrived) < len(pending.answers):
            return
        for sample_index, answers in enumerate(pending.answers):
            answers.append(pending.arrived[sample_index])
        pending.arrived.clear()
        if pending.turns_done < len(pending.prompt.turns):
            append_record(self.turns_path, self._turn_record(pending, request.turn))
            return
        record = output_record(
            self.name,
            pending.prompt,
            pending.answers,
            self.model_name,
            self.model_path,
            pending.decoding,
        )
        record["model_identity"] = self.model_identity
        append_record(self.output_path, record)
        del self.pending[request.prompt_key]
        self.generated += 1

    def finish(self) -> None:
        """Put the output file in benchmark order."""
        if self.pending:
            logger.warning(
                "%s: %d prompts got no answer; a rerun generates them", self.name, len(self.pending)
            )
        if self.output_path.exists():
            sort_records(self.output_path, self.record_key, [prompt.key for prompt in self.prompts])

    def run_summary(self) -> dict[str, Any]:
        """This invocation's entry in the meta file's ``runs``."""
        return dict(
            started_at=self.started_at,
            finished_at=datetime.now(timezone.utc).isoformat(),
            prompts=len(self.prompts),
            reused=self.reused,
            generated=self.generated,
            missing=len(self.pending),
        )

    def _turn_record(self, pending: PendingPrompt, turn: int) -> dict[str, Any]:
        return dict(
            id=pending.prompt.id,
            turn=turn,
            answers=[answers[turn] for answers in pending.answers],
            decoding=pending.decoding.as_dict(),
            model_identity=self.model_identity,
        )

    def _restore_earlier_turns(self) -> None:
        """Reuse answers to earlier turns from an interrupted run (same sample count only)."""
        records = load_records(self.turns_path, lambda record: f"{record['id']}\n{record['turn']}")
        for record in sorted(records.values(), key=lambda record: record["turn"]):
            pending = self.pending.get(str(record["id"]))
            if pending is None or pending.turns_done != record["turn"]:
                continue
            if len(record["answers"]) != len(pending.answers):
                continue
            if (record["decoding"] != pending.decoding.as_dict()
                    or record.get("model_identity") != self.model_identity):
                continue  # another model's or other settings' turn: answer it again
            for answers, answer in zip(pending.answers, record["answers"]):
                answers.append(answer)
