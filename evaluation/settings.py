"""The evaluation sections of the config: judge endpoint, AlpacaEval 2.0 and MT-Bench settings.

Plain dataclasses with no heavy imports, so the config root (``pipelines.config``) loads without
the ``eval`` extra; the benchmark modules import them from here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from orpo.config import ConfigError, require

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"
SHARED_REFERENCE_OUTPUTS = SHARED_BENCHMARKS / "alpaca_eval" / "gpt4_1106_preview_outputs.json"
ALPACA_EVAL_HUB_REPO = "tatsu-lab/alpaca_eval"
ALPACA_EVAL_JUDGE_MODEL = "gpt-4-1106-preview"
MT_BENCH_JUDGE_MODEL = "gpt-4"
# The name `evaluation.fixture_judge` (a test double for smoke runs) serves under: results judged
# by it are labelled as such. Only the name lives here; the product never imports the fixture.
FIXTURE_JUDGE_MODEL = "fixture-judge"
NEED_REF_CATS = ("math", "reasoning", "coding")
AUTO_KEY_ENV = "auto"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
OPENAI_HOST = "api.openai.com"


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
    api_key_env: str | None = AUTO_KEY_ENV
    """Name of the environment variable that holds the key (never the key itself). None: keyless
    server. `auto` (the default) means `OPENAI_API_KEY`, and only for OpenAI's own endpoint: any
    other `base_url` must name its variable (or null), so the OpenAI key never goes elsewhere. A
    key is never sent over plain http except to a loopback host (a local server)."""
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
    max_total_retries: int | None = 500
    """Retries allowed across the whole run (all requests together); past it the client stops and
    raises, keeping what it has. None: no run-wide budget (only `max_retries` per request)."""
    breaker_consecutive_429: int | None = 32
    """Stop after this many 429s in a row, over all threads, with no success between them (a rate
    limit that is not lifting: at concurrency 8, four rounds of shared pauses). An
    `insufficient_quota` 429 stops at once. None: never."""

    def __post_init__(self) -> None:
        require(self.concurrency > 0, "judge.concurrency", "must be > 0", self.concurrency)
        require(self.max_retries >= 0, "judge.max_retries", "must be >= 0", self.max_retries)
        require(0 <= self.backoff_initial_s <= self.backoff_max_s, "judge.backoff_initial_s",
                f"must be in [0, backoff_max_s={self.backoff_max_s}]", self.backoff_initial_s)
        require(self.timeout_s > 0, "judge.timeout_s", "must be > 0", self.timeout_s)
        for key in ("max_total_retries", "breaker_consecutive_429"):
            value = getattr(self, key)
            require(value is None or value > 0, f"judge.{key}", "must be > 0 or null", value)
        self.key_env()  # the key rules, checked at load

    def key_env(self) -> str | None:
        """The environment variable to read the key from (None: keyless), or a ConfigError when
        the endpoint and key settings would send a key where it must not go."""
        url = urlsplit(self.base_url)
        require(url.scheme in ("http", "https") and bool(url.hostname), "judge.base_url",
                "must be an http(s) URL with a host", self.base_url)
        variable = self.api_key_env
        if variable == AUTO_KEY_ENV:
            if url.scheme != "https" or url.hostname != OPENAI_HOST:
                raise ConfigError(
                    f"'judge.api_key_env' must be set explicitly for base_url {self.base_url!r} "
                    f"(the default sends {OPENAI_KEY_ENV} to {OPENAI_HOST} only): name the variable "
                    "holding this endpoint's key, or null for a keyless server"
                )
            variable = OPENAI_KEY_ENV
        if variable is not None and url.scheme == "http" and not _is_loopback(url.hostname or ""):
            raise ConfigError(
                f"'judge.api_key_env' is {variable!r} but 'judge.base_url' {self.base_url!r} is plain "
                "http to a non-loopback host: the key would travel unencrypted; use https "
                "(or api_key_env: null for a keyless server)"
            )
        return variable


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
