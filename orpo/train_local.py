"""The local launcher: the whole job in one plain process, no Ray (``launcher: local``).

``python -m pipelines.train --config configs/tiny_local.yaml`` runs it (the config says
``launcher: local``). Reads and validates the data (rejects go to ``rejects.jsonl``) with the
same train/eval split as the Ray launcher, builds the job (``orpo.job``), trains with PyTorch
AdamW and exports a Hugging Face checkpoint to ``<output_dir>/export``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from orpo.collate import PreferenceCollator, length_grouped_batches, random_batches
from orpo.config import to_dict
from orpo.context import LocalContext, resolve_device
from orpo.data import TokenizedBatch, assign_split, tokenize_records
from orpo.engine import TorchEngine
from orpo.job import (
    attach_engine,
    build_job,
    claim_output_dir,
    export_trained,
    reference_logps,
    reference_scorer,
    seed_for_training,
)
from orpo.modeling import resolve_model_path
from orpo.sources import load_labeled_records
from orpo.trainer import LoopInputs, train
from orpo.trainer_config import DataConfig

EXPORT_DIR = "export"


def data_sources(cfg: DataConfig) -> list[tuple[str, str, float]]:
    """``(source, split, eval_fraction)`` to read: all of ``eval_source`` is eval, when given."""
    if cfg.eval_source:
        return [(cfg.source, cfg.split, 0.0), (cfg.eval_source, cfg.eval_split, 1.0)]
    return [(cfg.source, cfg.split, cfg.eval_fraction)]


def prepare_data(cfg: DataConfig, tokenizer: Any, output_dir: Path) -> tuple[TokenizedBatch, TokenizedBatch, dict]:
    """Read, split, validate and tokenize; write ``rejects.jsonl``; return train, eval and stats."""
    spec = cfg.tokenize_spec()
    sets = {"train": TokenizedBatch(), "eval": TokenizedBatch()}
    read = 0
    for source, split, eval_fraction in data_sources(cfg):
        labeled = load_labeled_records(source, split, cfg.revision, cfg.synthetic_size, cfg.seed, cfg.limit,
                                       cfg.max_record_bytes)
        read += len(labeled)
        for label, row, record in labeled:
            part = sets[assign_split(label, row, eval_fraction, cfg.seed)]
            one = tokenize_records([record], tokenizer, spec, cfg.columns, [row], collect_rejects=True)
            part.examples += [{**example, "source": label} for example in one.examples]
            part.rejects += [{"source": label, **reject} for reject in one.rejects]
    train_set, eval_set = sets["train"], sets["eval"]
    rejects = train_set.rejects + eval_set.rejects
    with (output_dir / "rejects.jsonl").open("w") as f:
        for reject in rejects:
            f.write(json.dumps(reject) + "\n")
    stats = {
        "read": read,
        "accepted": len(train_set.examples) + len(eval_set.examples),
        "rejected": len(rejects),
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejects)),
        "train_pairs": len(train_set.examples),
        "eval_pairs": len(eval_set.examples),
        "truncated": sum(ex["truncated"] for ex in train_set.examples + eval_set.examples),
        "prompt_trimmed": sum(ex["prompt_trimmed"] > 0 for ex in train_set.examples + eval_set.examples),
    }
    if not train_set.examples:
        raise ValueError(f"no usable training pairs in '{cfg.source}': {stats}")
    return train_set, eval_set, stats


def make_batches(examples: list[dict], collator: PreferenceCollator, batch_size: int, seed: int,
                 group_by_length: bool, drop_last: bool = True):
    """Collated micro-batches of one epoch, in a seeded order."""
    if group_by_length:
        order = length_grouped_batches([ex["length"] for ex in examples], batch_size, seed, drop_last=drop_last)
    else:
        order = random_batches(len(examples), batch_size, seed, drop_last=drop_last)
    return (collator([examples[i] for i in idx]) for idx in order)


def run(cfg: Any, echo: bool = True) -> LocalContext:
    """The whole single-process job (``cfg`` is the config root); returns its context."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    claim_output_dir(to_dict(cfg), output_dir)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    device = resolve_device(cfg.loop.device)
    restore = Path(cfg.checkpoint.resume_from) if cfg.checkpoint.resume_from else None
    ctx = LocalContext(output_dir, device, echo=echo, restore_dir=restore)

    model_path = resolve_model_path(cfg.model, output_dir)
    job = build_job(cfg, model_path, device)
    train_set, eval_set, stats = prepare_data(cfg.data, job.tokenizer, output_dir)
    (output_dir / "data_stats.json").write_text(json.dumps(stats, indent=2))
    if cfg.loss.type.needs_reference_model and cfg.loss.precompute_reference:
        collator = job.collator(cfg.data.pad_to_multiple_of)  # padded: packing is decided below
        scorer = reference_scorer(cfg, model_path, device)
        for examples in (train_set.examples, eval_set.examples):
            for example, (chosen, rejected) in zip(examples, reference_logps(
                    examples, scorer, collator, device, cfg.loop.micro_batch_size)):
                example["ref_chosen_logps"], example["ref_rejected_logps"] = chosen, rejected
        del scorer

    micro = cfg.loop.micro_batch_size
    steps_per_epoch = cfg.loop.steps_per_epoch(len(train_set.examples), world_size=1)

    engine = TorchEngine(job.model, cfg.optim, cfg.loop.total_steps(steps_per_epoch))
    attach_engine(job, cfg, engine.module, device)
    collator = job.collator(cfg.data.pad_to_multiple_of)

    def train_batches(epoch: int):
        return make_batches(train_set.examples, collator, micro, cfg.data.seed + epoch, cfg.data.group_by_length)

    def eval_batches():
        return make_batches(eval_set.examples, collator, micro, 0, False, drop_last=False)

    seed_for_training(cfg, ctx.rank)
    inputs = LoopInputs(train_batches, steps_per_epoch, eval_batches if eval_set.examples else None,
                        job.reference, job.chunked)
    state = train(cfg, ctx, engine, inputs)
    export_dir = export_trained(cfg, job, output_dir / EXPORT_DIR)
    if echo:
        print(f"data: {stats['accepted']} of {stats['read']} records accepted, {stats['rejected']} rejected "
              f"({output_dir / 'rejects.jsonl'})")
        print(f"trained {state.step} steps; metrics: {ctx.metrics_path}")
        print(f"model exported to {export_dir}")
    return ctx

