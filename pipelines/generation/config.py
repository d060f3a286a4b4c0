"""The ``generation`` section of the config root (``pipelines.config.Config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from orpo.config import ConfigError

BENCHMARK_NAMES = ("ifeval", "mt_bench", "alpaca_eval")


@dataclass
class DecodingConfig:
    """Overrides of a benchmark's decoding settings; ``None`` keeps the benchmark's own default
    (see ``pipelines.generation.benchmarks.DEFAULT_DECODING``)."""

    temperature: float | None = None
    """Sampling temperature; 0 means greedy. For MT-Bench an explicit value applies to every
    category not named in ``category_temperatures`` (it replaces FastChat's per-category table)."""
    top_p: float | None = None
    """Nucleus sampling mass (used only when sampling)."""
    max_new_tokens: int | None = None
    """Most tokens generated per answer (per turn for MT-Bench)."""
    num_samples: int | None = None
    """Answers per prompt (several for the diversity measures; MT-Bench ``num_choices``)."""
    seed: int | None = None
    """Base seed; sample ``i`` of every prompt uses ``seed + i`` (FastChat seeds choice ``i``
    with ``i``)."""
    category_temperatures: dict[str, float] | None = None
    """MT-Bench only: temperatures by question category, merged over FastChat's table."""


@dataclass
class BenchmarkConfig:
    """One benchmark's prompts and decoding."""

    data_path: str | None = None
    """Prompt file; ``None`` is the shared copy next to the repo (``../shared/benchmarks``), else
    the hub (IFEval, AlpacaEval; MT-Bench questions come from a path only)."""
    limit: int | None = None
    """Generate for the first N prompts only (smoke runs)."""
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """Overrides of the benchmark's decoding defaults."""


@dataclass
class HFBackendConfig:
    """transformers ``generate`` in a Ray Data actor pool (runs anywhere, CPU included)."""

    batch_size: int = 8
    """Prompts per ``generate`` call (left-padded)."""
    concurrency: int = 1
    """Actors in the pool, each holding one model copy."""
    num_cpus: float = 1.0
    """CPUs reserved per actor; keep total below the cluster's so Ray Data tasks still run."""
    num_gpus: float = 0.0
    """GPUs per actor; > 0 puts the model on CUDA."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; ``auto`` is bfloat16 on GPUs that support it, float32 on CPU."""


@dataclass
class VLLMBackendConfig:
    """vLLM engines through Ray Data LLM (``ray.data.llm``): GPU clusters, or CPU workers with the
    CPU build of vLLM (placement from ``placement_group_config``)."""

    batch_size: int = 64
    """Rows sent to an engine per batch."""
    concurrency: int = 1
    """Engine replicas (data parallel); each uses tensor_parallel_size x pipeline_parallel_size
    GPUs."""
    tensor_parallel_size: int = 1
    """GPUs one engine shards its weights over."""
    pipeline_parallel_size: int = 1
    """Pipeline stages per engine."""
    max_model_len: int = 4096
    """Longest prompt + answer the engine accepts."""
    dtype: str = "auto"
    """Weights dtype passed to vLLM (``auto``, ``bfloat16``, ``float16``)."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory vLLM may take."""
    enable_prefix_caching: bool = True
    """Reuse KV cache across prompts sharing a prefix (MT-Bench turn 2, samples of one prompt)."""
    max_concurrent_batches: int = 8
    """Batches in flight per engine."""
    accelerator_type: str | None = None
    """Ray accelerator type to schedule engines on (e.g. ``H100``)."""
    placement_group_config: dict[str, Any] | None = None
    """Engine placement (Ray placement-group bundles, one per tensor/pipeline-parallel worker).
    ``None``: one ``{"GPU": 1, "CPU": 1}`` bundle per worker. ``{"bundles": [{"CPU": 1}]}`` runs
    the CPU build of vLLM on CPU-only workers (tensor and pipeline parallel 1)."""
    check_resources: bool = True
    """Before starting, refuse (naming the numbers) when the Ray cluster has fewer CPUs / GPUs than
    the engines plus Ray Data's own tasks need: otherwise the dataset waits forever, silently.
    Turn off on an autoscaling cluster that grows on demand."""
    log_engine_metrics: bool = True
    """Export engine metrics to Prometheus (turn off for CPU builds of vLLM)."""
    runtime_env: dict[str, Any] | None = None
    """Ray runtime env of the engine actors (e.g. env vars, pip)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further vLLM engine arguments, applied last (override the fields above)."""


@dataclass
class GenerationConfig:
    """The ``generation`` section: which benchmarks, which backend, what decoding.

    The model that answers is the root's ``model`` section, Ray is the root's ``ray``."""

    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARK_NAMES))
    """Which benchmarks to generate for: any of ifeval, mt_bench, alpaca_eval."""
    backend: Literal["hf", "vllm"] = "hf"
    """``hf`` (transformers, anywhere) or ``vllm`` (Ray Data LLM, GPUs)."""
    ifeval: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    """IFEval: greedy, up to 1280 new tokens unless overridden."""
    mt_bench: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    """MT-Bench: two turns, FastChat's per-category temperatures, 1024 new tokens per turn."""
    alpaca_eval: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    """AlpacaEval: greedy (alpaca_eval's HF default), up to 2048 new tokens."""
    hf: HFBackendConfig = field(default_factory=HFBackendConfig)
    """Settings of the transformers backend."""
    vllm: VLLMBackendConfig = field(default_factory=VLLMBackendConfig)
    """Settings of the vLLM backend."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.benchmarks) - set(BENCHMARK_NAMES))
        if unknown:
            raise ConfigError(
                f"unknown benchmark '{unknown[0]}' (known: {', '.join(BENCHMARK_NAMES)})"
            )

    def benchmark(self, name: str) -> BenchmarkConfig:
        """The settings of benchmark ``name``."""
        return getattr(self, name)
