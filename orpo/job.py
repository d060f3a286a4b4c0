"""One job set-up for both launchers: the model (LoRA), the DPO reference in every mode, export.

``orpo.train_local`` (one process) and ``pipelines.train`` (Ray Train workers under DeepSpeed)
differ only in where the data comes from and which engine steps the optimiser; everything a
training job builds around the loop is built here, so the two cannot drift apart.

Reference modes of DPO (``loss.needs_reference_model``):
- ``loss.reference_model`` set: that model, frozen;
- unset, with LoRA: the policy with its adapters disabled (the base it started from);
- unset, without LoRA: a frozen copy of the initial policy (loaded again from ``model_path``);
- ``loss.precompute_reference``: any of the above, scored once before training; the batches
  then carry ``ref_chosen_logps`` / ``ref_rejected_logps`` and no reference stays loaded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orpo.collate import PreferenceCollator
from orpo.logps import use_chunked
from orpo.modeling import (
    apply_lora,
    export_model,
    is_peft,
    load_model,
    load_tokenizer,
    prepare_for_training,
)
from orpo.objective import ModelReference, ReferenceLogps
from orpo.packing import PackedCollator, use_packing
from orpo.trainer_config import TrainSections

# Seeds differ per rank (dropout masks must), by a large odd stride so ranks never share a stream.
RANK_SEED_STRIDE = 1_000_003


@dataclass
class TrainingJob:
    """What a launcher trains: the tokenizer, the policy, its reference and the log-prob path."""

    model_path: str
    tokenizer: Any
    model: torch.nn.Module
    """The policy (a PEFT model with LoRA); the launcher hands it to its engine."""
    chunked: bool = False
    """Whether log-probs go through the chunked LM-head path (set by ``attach_engine``)."""
    reference: ReferenceLogps | None = None
    """Live DPO reference log-probs; None for reference-free losses and precomputed references."""
    packed: bool = False
    """Whether micro-batches are packed (``orpo.packing``; set by ``attach_engine``)."""

    def collator(self, pad_to_multiple_of: int | None) -> PreferenceCollator | PackedCollator:
        """The training collator: packed once ``attach_engine`` has found packing exact, else padded."""
        if self.packed:
            return PackedCollator(self.tokenizer.pad_token_id, pad_to_multiple_of)
        return PreferenceCollator(self.tokenizer.pad_token_id, pad_to_multiple_of)


def seed_for_setup(cfg: TrainSections) -> None:
    """The same seed on every rank while models are built: LoRA's initial weights must agree."""
    random.seed(cfg.loop.seed)
    torch.manual_seed(cfg.loop.seed)


def seed_for_training(cfg: TrainSections, rank: int) -> None:
    """A different seed per rank for training-time randomness (dropout, LoRA dropout)."""
    seed = cfg.loop.seed + RANK_SEED_STRIDE * rank
    random.seed(seed)
    torch.manual_seed(seed)


def build_job(cfg: TrainSections, model_path: str, device: torch.device | None,
              dtype: torch.dtype | None = None) -> TrainingJob:
    """Tokenizer and policy (gradient checkpointing, LoRA), as configured, seeded alike on every rank.

    ``device=None`` leaves the model where it loads (DeepSpeed places it). Once the launcher's
    engine wraps the policy, ``attach_engine`` completes the job.
    """
    seed_for_setup(cfg)
    tokenizer = load_tokenizer(model_path, cfg.model)
    policy = prepare_for_training(load_model(model_path, cfg.model, device, dtype), cfg.model)
    return TrainingJob(model_path, tokenizer, policy)


def attach_engine(job: TrainingJob, cfg: TrainSections, module: torch.nn.Module, device: torch.device | None,
                  dtype: torch.dtype | None = None,
                  wrap_reference: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> None:
    """Resolve the log-prob path and packing on what the loop will call (``module``: the policy,
    or the DeepSpeed engine, which under ZeRO-3 alone can run a forward) and build the live
    reference. Both checks run one tiny forward on every rank (collectives under ZeRO-3).

    ``wrap_reference`` lets a launcher wrap a separately loaded reference (ZeRO-3 partitions it
    in an inference engine).
    """
    job.chunked = use_chunked(module, cfg.loop.logits_mode)
    job.packed = use_packing(module, cfg.loop.packing)
    if cfg.loss.type.needs_reference_model and not cfg.loss.precompute_reference:
        job.reference = live_reference(cfg, job.model, job.model_path, device, dtype, job.chunked, wrap_reference)
        if job.packed and not job.reference.disable_adapter:  # a separate model scores the packed batches too
            job.packed = use_packing(job.reference.model, cfg.loop.packing)


def live_reference(cfg: TrainSections, policy: torch.nn.Module | None, model_path: str, device: torch.device | None,
                   dtype: torch.dtype | None, chunked: bool,
                   wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> ModelReference:
    """The DPO reference model (see the module docstring for the modes)."""
    chunk_size = cfg.loop.logits_chunk_size
    if cfg.loss.reference_model is None and policy is not None and is_peft(policy):
        return ModelReference(policy, disable_adapter=True, chunked=chunked, chunk_size=chunk_size)
    reference = load_model(cfg.loss.reference_model or model_path, cfg.model, device, dtype)
    if wrap is not None:
        reference = wrap(reference)
    return ModelReference(reference, chunked=chunked, chunk_size=chunk_size)


def reference_scorer(cfg: TrainSections, model_path: str, device: torch.device,
                     dtype: torch.dtype | None = None) -> ModelReference:
    """The reference that ``loss.precompute_reference`` scores with, before any training.

    With LoRA and no ``reference_model`` this is the base model: the policy with its adapters
    off, before training, is exactly that.
    """
    reference = load_model(cfg.loss.reference_model or model_path, cfg.model, device, dtype)
    return ModelReference(reference, chunked=use_chunked(reference, cfg.loop.logits_mode),
                          chunk_size=cfg.loop.logits_chunk_size)


def reference_logps(examples: Iterable[dict[str, Any]], reference: ReferenceLogps, collator: PreferenceCollator,
                    device: torch.device, batch_size: int) -> Iterator[tuple[float, float]]:
    """Summed reference log-probs ``(chosen, rejected)`` of each example, in order."""
    chunk: list[dict[str, Any]] = []
    for example in [*examples, None]:
        if example is not None:
            chunk.append(example)
        if chunk and (example is None or len(chunk) == batch_size):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(chunk).items()}
            ref_chosen, ref_rejected = reference(batch)
            yield from zip(ref_chosen.tolist(), ref_rejected.tolist())
            chunk = []


def export_trained(cfg: TrainSections, job: TrainingJob, out_dir: str | Path,
                   state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the trained model as a Hugging Face checkpoint that ``from_pretrained`` reloads.

    ``state_dict`` is the full state gathered from a sharded engine (the policy's own keys,
    PEFT's ``base_model.model.…`` with LoRA); without it the in-process model is saved. LoRA is
    merged into its base unless ``model.lora.save == "adapter"``. A gathered LoRA state is
    loaded into a freshly built base + LoRA model first (strictly: every tensor must match), so
    what is saved is exactly what was trained, under the base model's own key names.
    """
    save = cfg.model.lora.save
    if state_dict is None:
        return export_model(job.model, job.tokenizer, out_dir, save)
    if not is_peft(job.model):
        target = job.model.get_base_model() if hasattr(job.model, "get_base_model") else job.model
        return export_model(target, job.tokenizer, out_dir, save, state_dict=state_dict)
    dtype = next(iter(state_dict.values())).dtype
    rebuilt = apply_lora(load_model(job.model_path, cfg.model, torch.device("cpu"), dtype), cfg.model.lora)
    missing, unexpected = rebuilt.load_state_dict(state_dict, strict=False)
    tied = {name for name in missing if name.endswith("lm_head.weight")} if rebuilt.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"the gathered LoRA state does not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    return export_model(rebuilt, job.tokenizer, out_dir, save)


# The sections that decide what a training run computes; the rest (trackers, Ray address, retries,
# later stages) may change between attempts of the same run.
RUN_DEFINING_KEYS = ("name", "launcher", "model", "data", "loss", "optim", "loop", "scaling", "deepspeed")


def claim_output_dir(config: dict[str, Any], output_dir: Path, extra_keys: tuple[str, ...] = ()) -> None:
    """Record what this run computes in ``output_dir/run_config.json``; refuse a different one.

    A rerun into the same directory continues the same run (Ray Train restores its latest
    checkpoint by name and storage path). A rerun with other settings would silently resume, or
    append to, the old run's checkpoints and metrics, so it is refused, naming what changed.
    """
    defining = {key: config[key] for key in (*RUN_DEFINING_KEYS, *extra_keys) if key in config}
    defining["checkpoint.resume_from"] = config.get("checkpoint", {}).get("resume_from")
    path = Path(output_dir) / "run_config.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != defining:
            changed = _changed_keys(recorded, defining)
            raise ValueError(f"{output_dir} holds a run with other settings ({', '.join(changed)} changed); "
                             "use another output_dir, or delete it to start over")
        return
    path.write_text(json.dumps(defining, indent=2, sort_keys=True))


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]
