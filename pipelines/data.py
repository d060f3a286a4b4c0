"""Ray Data preference pipeline: read, validate, tokenize, split, and stream pairs to workers.

Two phases, both streaming (nothing is materialised in the driver or a worker):
1. ``preprocess``: files / a hub dataset / the synthetic set are read a chunk at a time, one
   file in several parallel pieces (``pipelines.data_sources``), tokenized by ``orpo.data`` in
   ``map_batches``, assigned to train or eval by a seeded hash of
   their source position, and written as Parquet partitioned by split (``train``, ``eval``,
   ``rejected``). The counts come from the Parquet footers, and ``rejects.jsonl`` from the
   rejected rows' small columns (read = accepted + rejected, rejects by reason).
2. ``train_dataset`` / ``eval_dataset``: the tokenized Parquet, streamed to the Ray Train
   workers (``streaming_split``) in a seeded block order; ``worker_batches`` length-groups and
   collates them inside each worker.
Each record keeps its source position (file and row) into the rejects and the batches.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray

from orpo.collate import PreferenceCollator, length_grouped_batches
from orpo.data import (
    Columns,
    RecordError,
    RejectReason,
    TokenizeSpec,
    assign_split,
    normalize_record,
    tokenize_pair,
)
from orpo.sources import HUB_PREFIX, expand_files, is_synthetic, source_label, too_large
from orpo.synthetic import make_preference_records, write_jsonl
from orpo.trainer_config import DataConfig
from pipelines.config import DataPipelineSettings
from pipelines.data_sources import (
    UNREADABLE_MARKER,
    is_uri,
    list_source_files,
    plan_pieces,
    read_pieces,
)

SPLITS = ("train", "eval", "rejected")
EXAMPLE_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", "length", "truncated", "index", "source"]


def read_records(cfg: DataConfig, pipeline: DataPipelineSettings, source: str, split: str,
                 output_dir: Path) -> ray.data.Dataset | None:
    """A dataset of ``{record_json, source, row}`` for any supported source (the first
    ``data.limit`` records when set), or None when there is none; files are read in parallel pieces
    (``pipelines.data_sources``)."""
    labels: dict[str, str] = {}
    if is_synthetic(source):
        path = write_jsonl(output_dir / "data" / f"synthetic_{cfg.synthetic_size}_{cfg.seed}.jsonl",
                           make_preference_records(cfg.synthetic_size, cfg.seed))
        labels[str(path.resolve())] = source_label(source, split)
        source = str(path)
    if source.startswith(HUB_PREFIX):
        import datasets

        name = source[len(HUB_PREFIX):]
        hub = datasets.load_dataset(name, split=split, revision=cfg.revision)
        if cfg.limit is not None:
            hub = hub.select(range(min(cfg.limit, len(hub))))
        hub = hub.map(lambda record, row: {"record_json": json.dumps(record, default=str), "row": row},
                      with_indices=True, remove_columns=hub.column_names)
        dataset = ray.data.from_huggingface(hub)
        label = source_label(source, split)
        return dataset.map_batches(lambda b: {**b, "source": np.array([label] * len(b["row"]))})
    pieces = plan_pieces(list_source_files(source), labels, pipeline.min_read_bytes, pipeline.tokenize_num_cpus,
                         cfg.limit)
    return read_pieces(pieces, cfg.max_record_bytes, pipeline.tokenize_num_cpus) if pieces else None


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize_batch(batch: dict[str, np.ndarray], tokenizer_path: str, trust_remote_code: bool,
                   spec: dict, columns: dict, eval_fraction: float, seed: int,
                   max_record_bytes: int = 8 * 1024 * 1024) -> dict[str, list]:
    """``map_batches`` UDF: every input row becomes exactly one output row (an example or a reject)."""
    tokenizer = _tokenizer(tokenizer_path, trust_remote_code)
    spec_, columns_ = TokenizeSpec(**spec), Columns(**columns)
    out: dict[str, list] = {name: [] for name in
                            ["split", "source", "index", "prompt_ids", "chosen_ids", "rejected_ids", "length",
                             "truncated", "prompt_trimmed", "reject_reason", "reject_field", "reject_detail"]}
    for record_json, source, row in zip(batch["record_json"], batch["source"], batch["row"]):
        source, row = str(source), int(row)
        try:
            size = len(record_json.encode("utf-8"))
            if size > max_record_bytes:  # before parsing: one runaway row must not exhaust the worker
                unread = too_large(size, max_record_bytes)
                raise RecordError(row, "<record>", unread.reason, unread.detail)
            try:
                record = json.loads(record_json)
            except json.JSONDecodeError as error:
                raise RecordError(row, "<record>", RejectReason.NOT_JSON, f"not valid JSON: {error}") from None
            if isinstance(record, dict) and UNREADABLE_MARKER in record:
                unread = record[UNREADABLE_MARKER]
                raise RecordError(row, "<record>", RejectReason(unread["reason"]), unread["detail"])
            if not isinstance(record, dict):
                raise RecordError(row, "<record>", RejectReason.WRONG_TYPE, "a record must be a JSON object")
            example = tokenize_pair(normalize_record(record, row, columns_), tokenizer, spec_, row, columns_)
            split, reason, field, detail = assign_split(source, row, eval_fraction, seed), "", "", ""
        except RecordError as error:
            example = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "length": 0, "truncated": False,
                       "prompt_trimmed": 0}
            split, reason, field, detail = "rejected", error.reason.value, error.field, error.detail
        out["split"].append(split)
        out["source"].append(source)
        out["index"].append(row)
        for key in ("prompt_ids", "chosen_ids", "rejected_ids", "length", "truncated", "prompt_trimmed"):
            out[key].append(example[key])
        out["reject_reason"].append(reason)
        out["reject_field"].append(field)
        out["reject_detail"].append(detail)
    return out


def data_fingerprint(cfg: DataConfig, tokenizer_path: str) -> dict[str, Any]:
    """What tokenized pairs depend on: the data section, the tokenizer's files and the input files.

    Input files are identified by path, size and modification time (hashing terabytes at every
    start would cost more than the tokenization it guards); hub sources by name and revision.
    """
    def identity(path: Path) -> list[Any]:
        stat = path.stat()
        return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]

    tokenizer_dir = Path(tokenizer_path)
    tokenizer = ({p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(tokenizer_dir.iterdir())
                  if p.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges"))}
                 if tokenizer_dir.is_dir() else tokenizer_path)
    inputs = {}
    for source in filter(None, (cfg.source, cfg.eval_source)):
        if not (is_synthetic(source) or source.startswith(HUB_PREFIX) or is_uri(source)):
            inputs[source] = [identity(Path(f)) for f in expand_files(source)]
    return {"data": json.loads(json.dumps(asdict(cfg), default=str)), "tokenizer": tokenizer, "inputs": inputs}


def _changes(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(recorded) | set(current))
    out = []
    for key in keys:
        a, b = recorded.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def preprocess(cfg: DataConfig, pipeline: DataPipelineSettings, tokenizer_path: str, trust_remote_code: bool,
               data_dir: Path) -> dict[str, Any]:
    """Phase 1: tokenize every source into ``<data_dir>/tokenized``; write rejects and stats there.

    A ``data_dir`` that already holds them is reused only if it was made from the same inputs
    (``data_fingerprint``: data section, tokenizer, input files); otherwise this refuses, naming
    what changed. Reuse lets resumed jobs and sweep trials train on exactly the same pairs in the
    same order. The pairs are written under a temporary name and renamed into place, so a crash
    mid-tokenization leaves nothing that a rerun could mistake for (or append to) a finished copy.
    """
    tokenized = data_dir / "tokenized"
    stats_path = data_dir / "data_stats.json"
    fingerprint_path = data_dir / "data_fingerprint.json"
    fingerprint = data_fingerprint(cfg, tokenizer_path)
    if stats_path.exists() and tokenized.exists():
        recorded = json.loads(fingerprint_path.read_text()) if fingerprint_path.exists() else {}
        if recorded == fingerprint:
            return json.loads(stats_path.read_text())
        changed = _changes(recorded, fingerprint) if recorded else ["(no record of what made them)"]
        raise ValueError(f"{tokenized} holds pairs tokenized from other inputs: {', '.join(changed)} changed. "
                         "Use another output_dir (or data_pipeline.data_dir), or delete it to tokenize again")
    data_dir.mkdir(parents=True, exist_ok=True)
    partial = data_dir / "tokenized.partial"
    for leftover in (partial, tokenized):  # an interrupted earlier attempt
        shutil.rmtree(leftover, ignore_errors=True)
    sources = [(cfg.source, cfg.split, cfg.eval_fraction if not cfg.eval_source else 0.0)]
    if cfg.eval_source:
        sources.append((cfg.eval_source, cfg.eval_split, 1.0))
    partial.mkdir()
    options = ray.data.DataContext.get_current().execution_options
    preserve_order, options.preserve_order = options.preserve_order, True  # the same files for the same inputs
    try:
        for number, (source, split, eval_fraction) in enumerate(sources):
            records = read_records(cfg, pipeline, source, split, data_dir)
            if records is None:  # only empty files
                continue
            records.map_batches(
                tokenize_batch, batch_size=pipeline.tokenize_batch_size, num_cpus=pipeline.tokenize_num_cpus,
                concurrency=pipeline.max_tasks_in_flight,
                fn_kwargs=dict(tokenizer_path=tokenizer_path, trust_remote_code=trust_remote_code,
                               spec=asdict(cfg.tokenize_spec()), columns=asdict(cfg.columns),
                               eval_fraction=eval_fraction, seed=cfg.seed, max_record_bytes=cfg.max_record_bytes),
            ).write_parquet(str(partial / f"part{number}"), partition_cols=["split"],
                            max_rows_per_file=pipeline.rows_per_file)
    finally:
        options.preserve_order = preserve_order
    partial.rename(tokenized)
    stats = summarize(tokenized, data_dir / "rejects.jsonl")
    fingerprint_path.write_text(json.dumps(fingerprint, indent=2))
    stats_path.write_text(json.dumps(stats, indent=2))
    return stats


def _split_paths(tokenized: Path, split: str) -> list[str]:
    return sorted(str(p) for p in tokenized.glob(f"part*/split={split}") if p.is_dir())


def _split_files(tokenized: Path, split: str) -> list[Path]:
    return sorted(f for path in _split_paths(tokenized, split) for f in Path(path).rglob("*.parquet"))


def summarize(tokenized: Path, rejects_path: Path) -> dict[str, Any]:
    """Count rows per split (from the Parquet footers) and write ``rejects.jsonl``.

    Runs in the driver with pyarrow, no Ray Data pass: row counts are footer metadata; of the
    accepted pairs only the two flag columns are read, of the rejects only their small columns.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    truncated = prompt_trimmed = 0
    with rejects_path.open("w") as rejects:
        for split in SPLITS:
            for file in _split_files(tokenized, split):
                parquet = pq.ParquetFile(file)
                counts[split] += parquet.metadata.num_rows
                if split != "rejected":
                    flags = parquet.read(columns=["truncated", "prompt_trimmed"])
                    truncated += int(pc.sum(flags.column("truncated").cast("int64")).as_py() or 0)
                    # Pairs whose trained prompt is shorter than the generation prompt (orpo.data.encode_turns).
                    prompt_trimmed += int(pc.sum(pc.greater(flags.column("prompt_trimmed"), 0).cast("int64")
                                                 ).as_py() or 0)
                    continue
                columns = ["source", "index", "reject_reason", "reject_field", "reject_detail"]
                for batch in parquet.iter_batches(batch_size=4096, columns=columns):
                    for row in batch.to_pylist():
                        reasons[row["reject_reason"]] += 1
                        rejects.write(json.dumps({"source": row["source"], "index": row["index"],
                                                  "reason": row["reject_reason"], "field": row["reject_field"],
                                                  "detail": row["reject_detail"]}) + "\n")
    return {"read": sum(counts.values()), "accepted": counts["train"] + counts["eval"], "rejected": counts["rejected"],
            "rejected_by_reason": dict(reasons), "train_pairs": counts["train"], "eval_pairs": counts["eval"],
            "truncated": truncated, "prompt_trimmed": prompt_trimmed}


def split_dataset(data_dir: Path, split: str, seed: int) -> ray.data.Dataset | None:
    """Phase 2: the tokenized pairs of one split, in a seeded block order."""
    paths = _split_paths(data_dir / "tokenized", split)
    if not paths:
        return None
    return ray.data.read_parquet(paths, columns=EXAMPLE_COLUMNS).randomize_block_order(seed=seed)


def worker_batches(shard: Any, collator: PreferenceCollator, micro_batch_size: int, epoch: int, seed: int,
                   pipeline: DataPipelineSettings, group_by_length: bool, drop_last: bool = True
                   ) -> Iterator[dict]:
    """Inside a worker: stream its shard, length-group within windows, collate micro-batches.

    Rows come through a seeded local shuffle buffer; each window of
    ``length_group_window × micro_batch_size`` rows is cut into micro-batches of similar length,
    in a seeded order (``seed`` and ``epoch`` make it reproducible for resume).
    """
    window = micro_batch_size * pipeline.length_group_window
    rng_seed = seed * 1_000_003 + epoch
    rows = shard.iter_batches(batch_size=window, batch_format="pyarrow",
                              local_shuffle_buffer_size=pipeline.shuffle_buffer_size or None,
                              local_shuffle_seed=rng_seed)
    for number, table in enumerate(rows):
        examples = table.to_pylist()
        if group_by_length:
            order = length_grouped_batches([ex["length"] for ex in examples], micro_batch_size,
                                           rng_seed + number, megabatch_multiplier=pipeline.length_group_window)
        else:
            indices = list(range(len(examples)))
            random.Random(rng_seed + number).shuffle(indices)
            order = [indices[i:i + micro_batch_size] for i in range(0, len(indices), micro_batch_size)]
        for batch in order:
            if drop_last and len(batch) < micro_batch_size:
                continue
            yield collator([examples[i] for i in batch])


def heldout_prompts(data_dir: Path, out: Path) -> Path | None:
    """IFEval-format prompts of held-out pairs that carry instructions (the synthetic set does)."""
    records = []
    for source in sorted((data_dir / "data").glob("*.jsonl")):
        by_row = {row: record for row, record in enumerate(map(json.loads, source.read_text().splitlines()))}
        for path in _split_paths(data_dir / "tokenized", "eval"):
            for batch in ray.data.read_parquet(path, columns=["index"]).iter_batches(batch_format="pandas"):
                for row in batch["index"]:
                    record = by_row.get(int(row), {})
                    if "instruction_id_list" in record:
                        records.append({k: record[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")})
    if not records:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


class _ReferenceScorer:
    """``map_batches`` actor: the precomputed DPO reference log-probs of tokenized pairs."""

    def __init__(self, cfg: dict[str, Any], model_path: str):
        import torch

        from orpo.config import from_dict
        from orpo.job import reference_scorer
        from pipelines.config import Config

        self.cfg = from_dict(Config, cfg)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.reference = reference_scorer(self.cfg, model_path, self.device)
        tokenizer = _tokenizer(model_path, self.cfg.model.trust_remote_code)
        self.collator = PreferenceCollator(tokenizer.pad_token_id, self.cfg.data.pad_to_multiple_of)

    def __call__(self, table: Any) -> Any:
        from orpo.job import reference_logps

        scores = list(reference_logps(table.to_pylist(), self.reference, self.collator, self.device,
                                      self.cfg.loop.micro_batch_size))
        table = table.append_column("ref_chosen_logps", [[c for c, _ in scores]])
        return table.append_column("ref_rejected_logps", [[r for _, r in scores]])


def with_reference_logps(datasets: dict[str, ray.data.Dataset], cfg: Any, model_path: str,
                         out_dir: Path) -> dict[str, ray.data.Dataset]:
    """Score every pair with the DPO reference once (``loss.precompute_reference``), before training.

    The scored pairs are written under ``out_dir`` (a temporary name renamed into place, so a
    crash leaves no partial copy) and streamed from there: epochs and restarts reuse them, and no
    reference model is loaded in the workers.
    """
    from orpo.config import to_dict

    scored = {}
    for split, dataset in datasets.items():
        target = out_dir / split
        if not target.exists():
            partial = out_dir / f".{split}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            dataset.map_batches(
                _ReferenceScorer, fn_constructor_kwargs={"cfg": to_dict(cfg), "model_path": model_path},
                batch_size=max(64, cfg.loop.micro_batch_size), batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
                num_gpus=1 if cfg.scaling.use_gpu else 0,
            ).write_parquet(str(partial))
            partial.rename(target)
        scored[split] = ray.data.read_parquet(str(target)).randomize_block_order(seed=cfg.data.seed)
    return scored
