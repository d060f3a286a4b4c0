"""Single-process training: ``python -m orpo.train_local --config configs/tiny_local.yaml key=value``.

Loads and validates the data (rejects go to ``rejects.jsonl``), trains with the configured
objective, and exports a Hugging Face checkpoint to ``<output_dir>/export``. The distributed
version of this job is ``pipelines.train``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml

from orpo.collate import PreferenceCollator, length_grouped_batches, random_batches
from orpo.config import load_config, to_dict
from orpo.context import LocalContext, resolve_device
from orpo.data import TokenizedBatch, tokenize_records
from orpo.engine import TorchEngine
from orpo.logps import use_chunked
from orpo.modeling import export_model, is_peft, load_model, load_tokenizer, prepare_for_training, resolve_model_path
from orpo.objective import ModelReference
from orpo.sources import load_records
from orpo.trainer import LoopInputs, total_steps, train
from orpo.trainer_config import DataConfig, TrainConfig


def split_train_eval(records: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of record positions into (train, eval)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(records) * fraction))
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def prepare_data(cfg: DataConfig, tokenizer: Any, output_dir: Path) -> tuple[TokenizedBatch, TokenizedBatch, dict]:
    """Read, split, validate and tokenize; write ``rejects.jsonl``; return train, eval and stats."""
    records = load_records(cfg.source, cfg.split, cfg.revision, cfg.synthetic_size, cfg.seed, cfg.limit)
    if cfg.eval_source:
        eval_records = load_records(cfg.eval_source, cfg.eval_split, cfg.revision, cfg.synthetic_size, cfg.seed + 1)
        train_idx, eval_idx = list(range(len(records))), list(range(len(eval_records)))
    else:
        eval_records = records
        train_idx, eval_idx = split_train_eval(records, cfg.eval_fraction, cfg.seed)
    spec = cfg.tokenize_spec()
    train_set = tokenize_records([records[i] for i in train_idx], tokenizer, spec, cfg.columns, train_idx, True)
    eval_set = tokenize_records([eval_records[i] for i in eval_idx], tokenizer, spec, cfg.columns, eval_idx, True)
    with (output_dir / "rejects.jsonl").open("w") as f:
        for split, batch in (("train", train_set), ("eval", eval_set)):
            for reject in batch.rejects:
                f.write(json.dumps({"split": split, **reject}) + "\n")
    stats = {
        "read": len(train_idx) + len(eval_idx),
        "accepted": len(train_set.examples) + len(eval_set.examples),
        "rejected": len(train_set.rejects) + len(eval_set.rejects),
        "rejected_by_reason": dict(Counter(r["reason"] for r in train_set.rejects + eval_set.rejects)),
        "train_pairs": len(train_set.examples),
        "eval_pairs": len(eval_set.examples),
        "truncated": sum(ex["truncated"] for ex in train_set.examples + eval_set.examples),
    }
    if not train_set.examples:
        raise ValueError(f"no usable training pairs in '{cfg.source}': {stats}")
    return train_set, eval_set, stats


def make_batches(examples: list[dict], collator: PreferenceCollator, batch_size: int, seed: int,
                 group_by_length: bool, drop_last: bool = True):
    """Batch index lists for one epoch -> an iterator of collated batches."""
    if group_by_length:
        order = length_grouped_batches([ex["length"] for ex in examples], batch_size, seed, drop_last=drop_last)
    else:
        order = random_batches(len(examples), batch_size, seed, drop_last=drop_last)
    return (collator([examples[i] for i in idx]) for idx in order), len(order)


def attach_reference_logps(examples: list[dict], reference: ModelReference, collator: PreferenceCollator,
                           device: torch.device, batch_size: int) -> None:
    """Precompute DPO reference log-probs once and store them on the examples."""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collator(chunk).items()}
        ref_chosen, ref_rejected = reference(batch)
        for ex, c, r in zip(chunk, ref_chosen.tolist(), ref_rejected.tolist()):
            ex["ref_chosen_logps"], ex["ref_rejected_logps"] = c, r


def run(cfg: TrainConfig, resume_from: Path | None = None, echo: bool = True) -> LocalContext:
    """The whole single-process job; returns its context (metrics history, checkpoints)."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    ctx = LocalContext(output_dir, device, echo=echo)

    model_path = resolve_model_path(cfg.model, output_dir)
    tokenizer = load_tokenizer(model_path, cfg.model)
    model = prepare_for_training(load_model(model_path, cfg.model, device), cfg.model)
    chunked = use_chunked(model, cfg.train.logits_mode)
    train_set, eval_set, stats = prepare_data(cfg.data, tokenizer, output_dir)
    (output_dir / "data_stats.json").write_text(json.dumps(stats, indent=2))
    collator = PreferenceCollator(tokenizer.pad_token_id, cfg.data.pad_to_multiple_of)

    reference = None
    if cfg.loss.type.needs_reference_model:
        if cfg.loss.reference_model is None and is_peft(model):
            reference = ModelReference(model, disable_adapter=True, chunked=chunked)
        else:
            ref_path = cfg.loss.reference_model or model_path
            reference = ModelReference(load_model(ref_path, cfg.model, device), chunked=chunked)
        if cfg.loss.precompute_reference:
            for examples in (train_set.examples, eval_set.examples):
                attach_reference_logps(examples, reference, collator, device, cfg.train.micro_batch_size)
            reference = None

    micro = cfg.train.micro_batch_size
    accumulation = cfg.train.accumulation_steps(world_size=1)
    steps_per_epoch = (len(train_set.examples) // micro) // accumulation
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set.examples)} training pairs make no full step of "
                         f"global_batch_size={cfg.train.global_batch_size}")

    def train_batches(epoch: int):
        return make_batches(train_set.examples, collator, micro, cfg.data.seed + epoch, cfg.data.group_by_length)[0]

    def eval_batches():
        return make_batches(eval_set.examples, collator, micro, 0, False, drop_last=False)[0]

    engine = TorchEngine(model, cfg.optim, total_steps(cfg, steps_per_epoch))
    inputs = LoopInputs(train_batches, steps_per_epoch, eval_batches if eval_set.examples else None,
                        reference, chunked)
    state = train(cfg, ctx, engine, inputs, resume_from)
    export_dir = export_model(model, tokenizer, output_dir / "export", cfg.model.lora.save)
    if echo:
        print(f"data: {stats['accepted']} of {stats['read']} records accepted, {stats['rejected']} rejected "
              f"({output_dir / 'rejects.jsonl'})")
        print(f"trained {state.step} steps; metrics: {ctx.metrics_path}")
        print(f"model exported to {export_dir}")
    return ctx


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (defaults when omitted)")
    parser.add_argument("--resume-from", type=Path, help="checkpoint directory to resume from")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.lam=0.2")
    args = parser.parse_args(argv)
    run(load_config(TrainConfig, args.config, args.overrides), args.resume_from)


if __name__ == "__main__":
    main()
