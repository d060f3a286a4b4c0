"""The evaluation sections of the config: judge endpoint, AlpacaEval 2.0 and MT-Bench settings.

Plain dataclasses with no heavy imports, so the config root (``pipelines.config``) loads without
the ``eval`` extra; the benchmark modules import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"
SHARED_REFERENCE_OUTPUTS = SHARED_BENCHMARKS / "alpaca_eval" / "gpt4_1106_preview_outputs.json"
ALPACA_EVAL_HUB_REPO = "tatsu-lab/alpaca_eval"
ALPACA_EVAL_JUDGE_MODEL = "gpt-4-1106-preview"
MT_BENCH_JUDGE_MODEL = "gpt-4"
NEED_REF_CATS = ("math", "reasoning", "coding")


def default_reference_outputs() -> str:
    """The shared copy when this checkout has one, else the hub dataset name."""
    return str(SHARED_REFERENCE_OUTPUTS) if SHARED_REFERENCE_OUTPUTS.exists() else ALPACA_EVAL_HUB_REPO


def _shared(name: str) -> str:
    return str(SHARED_BENCHMARKS / "mt_bench" / name)


@dataclass
class JudgeConfig:
    """Which judge to call and how hard to push it."""

    base_url: str = "https://api.openai.com/v1"
    """OpenAI-compatible base URL, e.g. `http://127.0.0.1:8000/v1` for a vLLM server."""
    model: str = "gpt-4-1106-preview"
    """Judge model name sent to the endpoint; part of every cache key."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable that holds the key (never the key itself). None: keyless
    server."""
    concurrency: int = 8
    """Maximum number of requests in flight."""
    max_retries: int = 8
    """Retries per request after the first attempt, on 408/409/429/5xx, timeouts, connection
    errors."""
    backoff_initial_s: float = 1.0
    """First backoff delay; doubles on each retry, with jitter."""
    backoff_max_s: float = 60.0
    """Cap on any single wait, including a server's Retry-After."""
    timeout_s: float = 120.0
    """Per-request timeout."""
    cache_path: str | None = None
    """Append-only JSONL judgment cache. None: no cache (every call hits the endpoint)."""
    usd_per_million_prompt_tokens: float = 0.0
    """Price of prompt tokens, for cost accounting."""
    usd_per_million_completion_tokens: float = 0.0
    """Price of completion tokens, for cost accounting."""
    progress: bool = True
    """Show a progress bar in `complete_many`."""


@dataclass
class AnnotatorConfig:
    """Decoding of the weighted annotator (defaults: alpaca_eval's `configs.yaml`)."""

    use_logprobs: bool = True
    """Weighted preference from logprobs. False: the generated label alone (1 or 2)."""
    top_logprobs: int = 5
    """Alternatives requested for the one generated token."""
    max_tokens: int = 1
    """The verdict is a single token, `m` or `M`."""
    temperature: float = 1.0
    """alpaca_eval uses 1; it does not matter when the preference comes from logprobs."""
    swap_seed: int = 0
    """Seed of the per-instruction output-order swap; alpaca_eval's default annotator uses 0."""


@dataclass
class LengthControlConfig:
    """Where the official GLM inputs are, and the fit's settings (alpaca_eval's defaults)."""

    gamed_baselines_csv: str | None = None
    """Path to alpaca_eval's `df_gamed.csv` (hub: tatsu-lab/alpaca_eval). Enables the official
    `length_controlled_v1` GLM."""
    instruction_difficulty_csv: str | None = None
    """Path to alpaca_eval's `instruction_difficulty.csv`; used when `gamed_baselines_csv` is not
    given (`length_controlled_noreg`)."""
    regularize_to_baseline_lambda: float = 0.2
    """Total weight of the gamed-baseline annotations (split between the two)."""
    n_splits: int = 5
    """Folds of the grouped cross-validation that picks C."""
    n_cs: int = 10
    """Size of the C grid, logspace(-4, 4, n_cs) (sklearn's `Cs=10`)."""
    random_state: int = 123


@dataclass
class AlpacaEvalConfig:
    """AlpacaEval 2.0 settings."""

    reference_outputs: str = field(default_factory=default_reference_outputs)
    """Baseline outputs (GPT-4-Turbo, 805 records): a JSON path, or `tatsu-lab/alpaca_eval`."""
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(model=ALPACA_EVAL_JUDGE_MODEL))
    """Judge endpoint; `cache_path` None means `<output_dir>/judge_cache.jsonl`."""
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    length_control: LengthControlConfig = field(default_factory=LengthControlConfig)
    allow_subset: bool = False
    """Accept outputs for fewer than all 805 instructions (smoke tests; flagged as not
    comparable in the summary)."""


@dataclass
class MTBenchConfig:
    """MT-Bench settings; paths default to the shared benchmark copy."""

    questions: str = field(default_factory=lambda: _shared("question.jsonl"))
    """FastChat `question.jsonl`: question_id, category, turns."""
    judge_prompts: str = field(default_factory=lambda: _shared("judge_prompts.jsonl"))
    """FastChat `judge_prompts.jsonl` (single-v1, single-math-v1, and their multi-turn forms)."""
    reference_answers: str = field(default_factory=lambda: _shared("reference_answer_gpt-4.jsonl"))
    """FastChat `reference_answer/gpt-4.jsonl`, for the reference-based categories."""
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(model=MT_BENCH_JUDGE_MODEL))
    """Judge endpoint; `cache_path` None means `<output_dir>/judge_cache.jsonl`."""
    temperature: float = 0.0
    """Judge decoding, as FastChat's `run_judge_single`."""
    max_tokens: int = 2048
    need_ref_categories: tuple[str, ...] = NEED_REF_CATS
    """Categories graded against GPT-4's reference answers (FastChat's `NEED_REF_CATS`)."""
    question_ids: tuple[int, ...] | None = None
    """Grade only these questions (smoke runs; flagged as not comparable). None: all 80."""
