"""The training sections of the config: model, data, loss, optimiser and loop, as typed dataclasses.

They are sections of the one config root, ``pipelines.config.Config``; the code in ``orpo`` is
written against ``TrainSections`` (the sections it reads), so it never needs the root itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from orpo.config import require
from orpo.data import Columns, TokenizeSpec
from orpo.logps import LogitsMode, NllSpan
from orpo.losses import LossType


@dataclass
class LoraConfig:
    """Optional LoRA adapters through ``peft``."""

    enabled: bool = False
    """Train LoRA adapters instead of all weights."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules to adapt; ``all-linear`` is every linear layer but the LM head."""
    save: Literal["merged", "adapter"] = "merged"
    """Export the merged full model, or the adapter weights alone."""

    def __post_init__(self) -> None:
        require(self.r > 0, "model.lora.r", "must be > 0", self.r)
        require(0.0 <= self.dropout < 1.0, "model.lora.dropout", "must be in [0, 1)", self.dropout)


@dataclass
class ModelConfig:
    """Which model to train and how to load it."""

    name_or_path: str = "tiny"
    """HF hub name or local path; ``tiny`` builds the random-init tiny Llama under the output dir.
    Training starts from it; generation and evaluation answer with it."""
    display_name: str | None = None
    """Name written into benchmark outputs (AlpacaEval ``generator``, MT-Bench ``model_id``);
    unset: the last component of ``name_or_path``."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint. Off unless you trust its source."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Parameter dtype; ``auto`` is bfloat16 on GPUs that support it and float32 on CPU."""
    attn_implementation: str | None = "sdpa"
    """Attention kernel passed to ``from_pretrained`` (``sdpa``, ``eager``, ``flash_attention_2``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (off by default)."""


@dataclass
class DataConfig:
    """Where preference pairs come from and how they become tensors."""

    source: str = "synthetic"
    """JSONL/Parquet file, directory or glob (local or object store), ``hf:NAME`` for a hub
    dataset, or ``synthetic`` for the bundled verifiable preference set."""
    split: str = "train"
    """Split of a hub dataset (e.g. ``train_prefs`` for UltraFeedback binarized)."""
    revision: str | None = None
    """Revision of a hub dataset."""
    eval_source: str | None = None
    """Separate eval set (same forms as ``source``); when unset, ``eval_fraction`` is held out."""
    eval_split: str = "test"
    """Split of a hub eval dataset (e.g. ``test_prefs``)."""
    eval_fraction: float = 0.05
    """Fraction of ``source`` held out for eval when there is no ``eval_source``."""
    synthetic_size: int = 2000
    """Number of records generated for ``source: synthetic``."""
    limit: int | None = None
    """Use only the first N records of ``source`` (for smoke runs)."""
    columns: Columns = field(default_factory=Columns)
    """Record column names."""
    max_length: int = 1024
    """Longest prompt + response in tokens."""
    max_prompt_length: int = 512
    """Longest prompt in tokens when truncation is needed."""
    pad_to_multiple_of: int | None = None
    """Pad batch length to a multiple of this (8 helps tensor cores on GPU)."""
    group_by_length: bool = True
    """Batch pairs of similar length together to cut padding."""
    seed: int = 0
    """Seed for the shuffle and the train/eval split."""
    max_record_bytes: int = 8 * 1024 * 1024
    """Records larger than this (as JSON) are rejected before tokenizing (``record_too_large``):
    one runaway row must not exhaust a worker's memory. Far above any pair that fits ``max_length``."""

    def __post_init__(self) -> None:
        require(self.max_record_bytes > 0, "data.max_record_bytes", "must be > 0", self.max_record_bytes)
        require(0.0 <= self.eval_fraction < 1.0, "data.eval_fraction", "must be in [0, 1)", self.eval_fraction)
        require(self.synthetic_size > 0, "data.synthetic_size", "must be > 0", self.synthetic_size)
        require(self.limit is None or self.limit > 0, "data.limit", "must be > 0 or unset", self.limit)
        require(self.max_length > 1, "data.max_length", "must be > 1", self.max_length)
        require(self.max_prompt_length > 0, "data.max_prompt_length", "must be > 0", self.max_prompt_length)
        require(self.pad_to_multiple_of is None or self.pad_to_multiple_of > 0, "data.pad_to_multiple_of",
                "must be > 0 or unset", self.pad_to_multiple_of)

    def tokenize_spec(self) -> TokenizeSpec:
        return TokenizeSpec(max_length=self.max_length, max_prompt_length=self.max_prompt_length)


@dataclass
class LossConfig:
    """The objective and its hyperparameters."""

    type: LossType = LossType.ORPO
    """orpo, simpo, dpo or sft."""
    lam: float = 0.1
    """ORPO's λ: weight of the odds-ratio term."""
    beta: float | None = None
    """β of DPO (KL strength) and SimPO (reward scale); unset takes the loss type's default
    (``LossType.default_beta``: 0.1 for DPO, 2.0 for SimPO)."""
    gamma_beta_ratio: float = 0.5
    """SimPO's γ/β: target reward margin over β."""
    label_smoothing: float = 0.0
    """Conservative label smoothing ε for DPO and SimPO."""
    nll_span: NllSpan = NllSpan.PROMPT_AND_RESPONSE
    """Tokens the chosen NLL covers: prompt_and_response (ORPO paper, TRL) or response."""
    nll_normalization: Literal["token", "sequence"] = "token"
    """NLL averaged over all NLL tokens of the global batch (token, as TRL) or per sequence first."""
    reference_model: str | None = None
    """DPO reference: a path/hub name; unset means the initial policy (or the LoRA base)."""
    precompute_reference: bool = False
    """Compute reference log-probs once before training instead of keeping the model loaded."""

    def __post_init__(self) -> None:
        require(self.lam >= 0.0, "loss.lam", "must be >= 0", self.lam)
        require(self.beta is None or self.beta > 0.0, "loss.beta", "must be > 0 or unset", self.beta)
        require(0.0 <= self.label_smoothing < 0.5, "loss.label_smoothing", "must be in [0, 0.5)",
                self.label_smoothing)

    def beta_value(self) -> float:
        """β of this loss type: the configured one, else the type's default."""
        beta = self.beta if self.beta is not None else self.type.default_beta
        if beta is None:
            raise ValueError(f"loss.type={self.type.value} has no β")
        return beta


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 5e-6
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (β1, β2)."""
    adam_eps: float = 1e-8
    """AdamW ε."""
    schedule: Literal["linear", "cosine", "inverse_sqrt", "constant"] = "inverse_sqrt"
    """Schedule after warmup; the ORPO recipes use inverse_sqrt."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to ``lr``."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; unset disables clipping."""

    def __post_init__(self) -> None:
        require(self.lr > 0.0, "optim.lr", "must be > 0", self.lr)
        require(self.weight_decay >= 0.0, "optim.weight_decay", "must be >= 0", self.weight_decay)
        require(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas), "optim.adam_betas",
                "must be two values in [0, 1)", self.adam_betas)
        require(self.adam_eps > 0.0, "optim.adam_eps", "must be > 0", self.adam_eps)
        require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", self.warmup_steps)
        require(self.max_grad_norm is None or self.max_grad_norm > 0.0, "optim.max_grad_norm",
                "must be > 0 or unset", self.max_grad_norm)


@dataclass
class LoopConfig:
    """Batch sizes, length of training, logging, eval and checkpoint cadence."""

    micro_batch_size: int = 2
    """Pairs per forward pass on each worker."""
    global_batch_size: int = 8
    """Pairs per optimiser step over all workers and accumulation steps."""
    epochs: int = 1
    """Passes over the training set."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (caps ``epochs``)."""
    logging_steps: int = 10
    """Report training metrics every N optimiser steps."""
    eval_steps: int | None = None
    """Evaluate every N steps; always at the end when there is an eval set."""
    eval_at_start: bool = True
    """Also evaluate before the first step (step 0), so runs show where they started."""
    save_steps: int | None = None
    """Checkpoint every N steps; always at the end."""
    logits_mode: LogitsMode = LogitsMode.AUTO
    """Log-prob path: direct logits, chunked LM head, or auto (chunked for large vocabularies)."""
    logits_chunk_size: int = 1024
    """Tokens per LM-head chunk on the chunked path."""
    packing: bool | Literal["auto"] = "auto"
    """Padding-free packing (``orpo.packing``): a micro-batch's chosen and rejected sequences in
    one row, positions restarting per sequence, attention kept inside each. ``auto`` packs on GPUs
    where one tiny forward shows the model's attention honours it, and pads otherwise (on CPU the
    packed step measured slower); ``true`` packs on any device and refuses models whose attention
    would cross sequences; ``false`` always pads."""
    seed: int = 0
    """Seed for model init noise (dropout) and the data order."""
    device: str = "auto"
    """torch device for the local launcher; ``auto`` picks CUDA when present."""

    def __post_init__(self) -> None:
        for key in ("micro_batch_size", "global_batch_size", "epochs", "logging_steps", "logits_chunk_size"):
            require(getattr(self, key) > 0, f"loop.{key}", "must be > 0", getattr(self, key))
        for key in ("max_steps", "eval_steps", "save_steps"):
            value = getattr(self, key)
            require(value is None or value > 0, f"loop.{key}", "must be > 0 or unset", value)

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimiser step: global = micro × accumulation × workers."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"loop.global_batch_size={self.global_batch_size} is not a multiple of "
                f"loop.micro_batch_size × workers = {self.micro_batch_size} × {world_size}"
            )
        return self.global_batch_size // per_step

    def steps_per_epoch(self, train_pairs: int, world_size: int) -> int:
        """Optimiser steps in one epoch: every rank gets the same number of full micro-batches."""
        steps = (train_pairs // world_size // self.micro_batch_size) // self.accumulation_steps(world_size)
        if steps == 0:
            raise ValueError(f"{train_pairs} training pairs make no full step of loop.global_batch_size="
                             f"{self.global_batch_size} over {world_size} worker(s)")
        return steps

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run: the epochs, capped by ``max_steps``."""
        steps = steps_per_epoch * self.epochs
        return min(steps, self.max_steps) if self.max_steps else steps


class TrainSections(Protocol):
    """The sections of the config root that training reads (``pipelines.config.Config`` has them)."""

    model: ModelConfig
    data: DataConfig
    loss: LossConfig
    optim: OptimConfig
    loop: LoopConfig
