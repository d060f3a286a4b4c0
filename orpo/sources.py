"""Reading preference records in one process: JSONL/Parquet files, hub datasets, the synthetic set.

The Ray pipeline (``pipelines.data``) streams the same sources; this module serves the
single-process trainer, tests and benchmarks.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from orpo.data import RejectReason, UnreadableRecord
from orpo.synthetic import make_preference_records

HUB_PREFIX = "hf:"
SYNTHETIC = "synthetic"


def is_synthetic(source: str) -> bool:
    return source == SYNTHETIC


def expand_files(source: str) -> list[str]:
    """A file, a directory (its .jsonl/.json/.parquet files) or a glob, sorted; error if empty."""
    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet"))
    elif any(ch in source for ch in "*?["):
        files = sorted(glob.glob(source, recursive=True))
    else:
        files = [source] if path.exists() else []
    if not files:
        raise FileNotFoundError(f"data source '{source}' matches no .jsonl/.json/.parquet files")
    return files


def source_label(source: str, split: str, file: str | None = None) -> str:
    """The name a record's source goes by in rejects and in the train/eval split hash.

    ``synthetic``; ``hf:NAME:SPLIT`` for a hub dataset; a file's absolute path (or its URI). The
    Ray pipeline (``pipelines.data``) labels its records the same way, so both launchers split a
    config's data identically.
    """
    if is_synthetic(source):
        return SYNTHETIC
    if source.startswith(HUB_PREFIX):
        return f"{source}:{split}"
    assert file is not None
    return file if "://" in file else str(Path(file).resolve())


def load_labeled_records(source: str, split: str = "train", revision: str | None = None,
                         synthetic_size: int = 2000, seed: int = 0, limit: int | None = None,
                         max_record_bytes: int | None = None) -> list[tuple[str, int, Any]]:
    """``(source label, row, record)`` for every record of ``source``, in source order.

    ``row`` is the record's position in its file (non-blank JSONL lines, JSON list items,
    Parquet rows) or dataset; ``limit`` keeps the first N. Records are returned as read:
    a row that is not a JSON object is the tokenizer's to reject, not this reader's to drop; a
    JSONL line over ``max_record_bytes`` is not even parsed (it becomes an ``UnreadableRecord``).
    """
    if is_synthetic(source):
        labeled = [(SYNTHETIC, row, r) for row, r in enumerate(make_preference_records(synthetic_size, seed))]
    elif source.startswith(HUB_PREFIX):
        import datasets

        dataset = datasets.load_dataset(source[len(HUB_PREFIX):], split=split, revision=revision)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        label = source_label(source, split)
        labeled = [(label, row, r) for row, r in enumerate(dataset.to_list())]
    else:
        labeled = []
        for file in expand_files(source):
            label = source_label(source, split, file)
            labeled.extend((label, row, r) for row, r in enumerate(_read_file(file, max_record_bytes)))
            if limit is not None and len(labeled) >= limit:
                break
    return labeled[:limit] if limit is not None else labeled


def _read_file(file: str, max_record_bytes: int | None = None) -> list[Any]:
    if file.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(file).to_pylist()
    if file.endswith(".json"):
        try:
            data = json.loads(Path(file).read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{file}: not a UTF-8 JSON document: {error}") from None
        return data if isinstance(data, list) else [data]
    with open(file, "rb") as f:
        return [parse_jsonl_line(line, max_record_bytes) for line in f if line.strip()]


def parse_jsonl_line(line: bytes, max_record_bytes: int | None = None) -> Any:
    """One JSONL line as a value, or an ``UnreadableRecord`` saying why it is not one."""
    if max_record_bytes is not None and len(line.rstrip(b"\r\n")) > max_record_bytes:
        return too_large(len(line.rstrip(b"\r\n")), max_record_bytes)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return UnreadableRecord(RejectReason.NOT_UTF8, f"not UTF-8: {error}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return UnreadableRecord(RejectReason.NOT_JSON, f"not valid JSON: {error}")


def too_large(size: int, limit: int) -> UnreadableRecord:
    return UnreadableRecord(RejectReason.RECORD_TOO_LARGE,
                            f"the record is {size} bytes, over data.max_record_bytes={limit}")
