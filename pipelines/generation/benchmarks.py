"""The benchmarks' prompts, their decoding defaults (as each defines them) and output records."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.generation.config import BenchmarkConfig, DecodingConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
# The shared benchmark copies sit next to the repository, never inside it.
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"
DEFAULT_PATHS = {
    "ifeval": SHARED_BENCHMARKS / "ifeval" / "input_data.jsonl",
    "mt_bench": SHARED_BENCHMARKS / "mt_bench" / "question.jsonl",
    "alpaca_eval": SHARED_BENCHMARKS / "alpaca_eval" / "gpt4_1106_preview_outputs.json",
}
IFEVAL_HUB_DATASET = "google/IFEval"
ALPACA_EVAL_HUB_REPO = "tatsu-lab/alpaca_eval"
# The AlpacaEval 2.0 baseline (GPT-4 Turbo) outputs: the 805 instructions, as the shared copy.
ALPACA_EVAL_HUB_FILE = "alpaca_eval_gpt4_baseline.json"

# FastChat `fastchat/llm_judge/common.py::temperature_config`, used by `gen_model_answer.py`.
MT_BENCH_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
# FastChat treats temperatures below this as greedy decoding.
GREEDY_BELOW = 1e-4
ID_FIELDS = {"ifeval": "key", "mt_bench": "question_id", "alpaca_eval": "instruction"}


def clean_output(text: str) -> str:
    """Answers as stored: surrounding whitespace stripped (as FastChat does), by both backends."""
    return text.strip()


def answer_text(tokenizer: Any, token_ids: list[int]) -> str:
    """The stored answer of generated ids, the same for both backends: one ``decode`` of them all,
    special tokens skipped. (vLLM's incremental detokenizer renders a split UTF-8 character
    differently, so its ``generated_text`` is not used.)"""
    return clean_output(tokenizer.decode([int(token) for token in token_ids], skip_special_tokens=True))


@dataclass(frozen=True)
class Decoding:
    """The decoding settings of one prompt, resolved from benchmark defaults and overrides."""

    temperature: float
    """0 (below 1e-4) is greedy."""
    top_p: float
    """Nucleus mass when sampling."""
    max_new_tokens: int
    """Most tokens per answer (per turn)."""
    num_samples: int
    """Answers per prompt."""
    seed: int
    """Sample ``i`` uses ``seed + i``."""

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def sample_seed(self, sample_index: int) -> int:
        return self.seed + sample_index

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "greedy": self.greedy}


DEFAULT_DECODING = {
    # IFEval (lm-eval-harness task config): greedy, max_gen_toks 1280.
    "ifeval": Decoding(temperature=0.0, top_p=1.0, max_new_tokens=1280, num_samples=1, seed=0),
    # MT-Bench (FastChat gen_model_answer): 1024 new tokens, temperature by category; 0.7 is
    # FastChat's value for categories missing from its table.
    "mt_bench": Decoding(temperature=0.7, top_p=1.0, max_new_tokens=1024, num_samples=1, seed=0),
    # AlpacaEval: alpaca_eval's `huggingface_local_completions` decodes greedily by default
    # (do_sample=False) and its model configs use max_new_tokens 2048. Several published model
    # configs sample at temperature 0.7 instead: set `alpaca_eval.decoding.temperature=0.7`.
    "alpaca_eval": Decoding(temperature=0.0, top_p=1.0, max_new_tokens=2048, num_samples=1, seed=0),
}


def category_temperatures(benchmark: str, overrides: DecodingConfig) -> dict[str, float]:
    """Temperatures by category (MT-Bench): FastChat's table unless ``temperature`` was set
    explicitly, with ``category_temperatures`` merged over it."""
    if benchmark != "mt_bench":
        return dict(overrides.category_temperatures or {})
    table = {} if overrides.temperature is not None else dict(MT_BENCH_TEMPERATURES)
    table.update(overrides.category_temperatures or {})
    return table


def resolve_decoding(
    benchmark: str, overrides: DecodingConfig, category: str | None = None
) -> Decoding:
    """Benchmark default < explicit ``decoding.*`` < explicit category temperature."""
    default = DEFAULT_DECODING[benchmark]
    given = {
        name: getattr(overrides, name)
        for name in ("temperature", "top_p", "max_new_tokens", "num_samples", "seed")
        if getattr(overrides, name) is not None
    }
    resolved = dataclasses.replace(default, **given)
    by_category = category_temperatures(benchmark, overrides)
    if category is not None and category in by_category:
        resolved = dataclasses.replace(resolved, temperature=float(by_category[category]))
    if resolved.num_samples < 1 or resolved.max_new_tokens < 1:
        raise ValueError(
            f"{benchmark}: num_samples and max_new_tokens must be >= 1, got {resolved}"
        )
    return resolved


def decoding_summary(benchmark: str, overrides: DecodingConfig) -> dict[str, Any]:
    """What the meta file records: the resolved settings, plus the per-category table."""
    summary = resolve_decoding(benchmark, overrides).as_dict()
    table = category_temperatures(benchmark, overrides)
    if table:
        summary["category_temperatures"] = table
    return summary


@dataclass
class Prompt:
    """One benchmark item: its id, the user turns, and the source record."""

    id: Any
    """IFEval ``key``, MT-Bench ``question_id`` or AlpacaEval ``instruction``."""
    turns: list[str]
    """User messages; the model answers each in turn, seeing its own earlier answers."""
    category: str | None = None
    """MT-Bench category (selects the temperature)."""
    source: dict[str, Any] = field(default_factory=dict)
    """The record as loaded."""

    @property
    def key(self) -> str:
        """The id as a string, for matching records across files."""
        return str(self.id)


def load_prompts(benchmark: str, cfg: BenchmarkConfig) -> list[Prompt]:
    """The benchmark's prompts, from ``cfg.data_path``, the shared copy, or the hub."""
    if cfg.data_path is not None and not Path(cfg.data_path).exists():
        raise FileNotFoundError(f"{benchmark} prompt file not found: {cfg.data_path}")
    path = Path(cfg.data_path) if cfg.data_path else DEFAULT_PATHS[benchmark]
    loaders = {
        "ifeval": _ifeval_prompts,
        "mt_bench": _mt_bench_prompts,
        "alpaca_eval": _alpaca_eval_prompts,
    }
    prompts = loaders[benchmark](path if path.exists() else None)
    return prompts[: cfg.limit] if cfg.limit is not None else prompts


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _ifeval_prompts(path: Path | None) -> list[Prompt]:
    if path is not None:
        rows = _read_jsonl(path)
    else:
        import datasets  # only when going to the hub

        rows = list(datasets.load_dataset(IFEVAL_HUB_DATASET, split="train"))
    return [Prompt(id=row["key"], turns=[row["prompt"]], source=dict(row)) for row in rows]


def _mt_bench_prompts(path: Path | None) -> list[Prompt]:
    if path is None:  # FastChat ships no data, so there is no hub fallback
        raise FileNotFoundError(
            f"MT-Bench questions not found at {DEFAULT_PATHS['mt_bench']}: set mt_bench.data_path"
        )
    return [
        Prompt(
            id=row["question_id"], turns=list(row["turns"]), category=row["category"], source=row
        )
        for row in _read_jsonl(path)
    ]


def _alpaca_eval_prompts(path: Path | None) -> list[Prompt]:
    if path is None:
        from huggingface_hub import hf_hub_download  # only when going to the hub

        path = Path(
            hf_hub_download(ALPACA_EVAL_HUB_REPO, ALPACA_EVAL_HUB_FILE, repo_type="dataset")
        )
    rows = (
        _read_jsonl(path)
        if path.suffix == ".jsonl"
        else json.loads(path.read_text(encoding="utf-8"))
    )
    return [Prompt(id=row["instruction"], turns=[row["instruction"]], source=row) for row in rows]


def conversation(turns: list[str], answers: list[str]) -> list[dict[str, str]]:
    """Chat messages: user turn, the model's answer, next user turn, ... (as many as given)."""
    messages = []
    for index, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        if index < len(answers):
            messages.append({"role": "assistant", "content": answers[index]})
    return messages


def output_record(
    benchmark: str,
    prompt: Prompt,
    answers: list[list[str]],
    model_name: str,
    model_path: str,
    decoding: Decoding,
) -> dict[str, Any]:
    """The JSONL record of one prompt. ``answers[s][t]`` is sample ``s``'s answer to turn ``t``.

    The benchmark's own fields come first (what its scorer reads); every record also carries
    the conversation, all samples, the model and the decoding used.
    """
    first = answers[0]
    common = {
        "messages": conversation(prompt.turns, first),
        "model_path": model_path,
        "decoding": decoding.as_dict(),
    }
    if benchmark == "ifeval":
        own = {
            "key": prompt.id,
            "prompt": prompt.turns[0],
            "response": first[0],
            "model": model_name,
        }
        return {**own, "outputs": [sample[0] for sample in answers], **common}
    if benchmark == "mt_bench":  # FastChat model_answer fields, plus `turns` of the first choice
        own = {
            "question_id": prompt.id,
            "category": prompt.category,
            "turns": list(first),
            "model_id": model_name,
            "questions": list(prompt.turns),
        }
        choices = [{"index": index, "turns": list(sample)} for index, sample in enumerate(answers)]
        return {**own, "choices": choices, **common}
    if benchmark == "alpaca_eval":
        own = {
            "instruction": prompt.id,
            "output": first[0],
            "generator": model_name,
            "dataset": prompt.source.get("dataset"),
        }
        return {**own, "outputs": [sample[0] for sample in answers], **common}
    raise ValueError(f"unknown benchmark {benchmark!r}")
