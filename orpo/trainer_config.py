"""The training config: model, data, loss, optimiser and loop settings as typed dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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


@dataclass
class ModelConfig:
    """Which model to train and how to load it."""

    name_or_path: str = "tiny"
    """HF hub name or local path; ``tiny`` builds the random-init tiny Llama under the output dir."""
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

    def tokenize_spec(self) -> TokenizeSpec:
        return TokenizeSpec(max_length=self.max_length, max_prompt_length=self.max_prompt_length)


@dataclass
class LossConfig:
    """The objective and its hyperparameters."""

    type: LossType = LossType.ORPO
    """orpo, simpo, dpo or sft."""
    lam: float = 0.1
    """ORPO's λ: weight of the odds-ratio term."""
    beta: float = 0.1
    """β of DPO (KL strength) and SimPO (reward scale, e.g. 2.5)."""
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
    seed: int = 0
    """Seed for model init noise (dropout) and the data order."""
    device: str = "auto"
    """torch device for the single-process trainer; ``auto`` picks CUDA when present."""

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimiser step: global = micro × accumulation × workers."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                f"micro_batch_size × workers = {self.micro_batch_size} × {world_size}"
            )
        return self.global_batch_size // per_step


@dataclass
class TrainConfig:
    """Everything a single training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The model."""
    data: DataConfig = field(default_factory=DataConfig)
    """The preference data."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The objective."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """The optimiser."""
    train: LoopConfig = field(default_factory=LoopConfig)
    """The loop."""
    output_dir: str = "runs/local"
    """Where metrics, rejects, checkpoints and the export go."""
