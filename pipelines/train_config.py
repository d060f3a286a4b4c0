"""Config of the distributed training job: ``orpo``'s ``TrainConfig`` plus Ray, placement,
DeepSpeed, the Ray Data pipeline, fault tolerance and experiment trackers.

The same YAML runs with 2 CPU workers on a laptop and 8×N GPUs on a cluster: only ``scaling``
(and usually ``deepspeed``) changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from orpo.trainer_config import TrainConfig


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


@dataclass
class DeepSpeedSettings:
    """DeepSpeed ZeRO. The DeepSpeed JSON is derived from this and the loop config."""

    enabled: bool = True
    """Run workers under DeepSpeed; off means plain DDP-free single-engine training (1 worker)."""
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
    length_group_window: int = 64
    """Micro-batches per length-grouping window in each worker (bigger: less padding)."""
    shuffle_buffer_size: int = 2048
    """Rows in each worker's local shuffle buffer (seeded per epoch)."""
    object_store_memory: int | None = None
    """Object store bytes of an embedded Ray (unset: Ray's default)."""


@dataclass
class CheckpointSettings:
    """Checkpointing and fault tolerance."""

    num_to_keep: int | None = 2
    """Checkpoints kept in storage (unset keeps all)."""
    max_failures: int = 2
    """Worker-group restarts after a failure; each resumes from the latest checkpoint."""
    resume_from: str | None = None
    """A checkpoint directory of an earlier run to start this (new) run from."""
    storage_path: str | None = None
    """Ray Train storage (shared FS or ``s3://…``) for checkpoints; unset: ``<output_dir>/ray``."""


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
class DistributedTrainConfig(TrainConfig):
    """A Ray Train + DeepSpeed training job."""

    name: str = "orpo"
    """Run name (Ray Train's experiment name)."""
    ray: RaySettings = field(default_factory=RaySettings)
    """How to reach Ray."""
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    """Workers and their placement."""
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)
    """DeepSpeed ZeRO."""
    data_pipeline: DataPipelineSettings = field(default_factory=DataPipelineSettings)
    """Ray Data preprocessing and streaming."""
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    """Checkpoints and fault tolerance."""
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    """Experiment trackers."""
