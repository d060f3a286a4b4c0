"""Resumable JSONL output: read what is done (surviving a torn last line), append the rest."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)


def load_records(path: Path, key: Callable[[dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
    """Records of a JSONL file by ``key(record)``, repairing the file if it needs it.

    A run killed mid-write leaves a partial last line; appending after it would glue the next
    record onto it. Such lines are dropped, as are earlier duplicates of a key, and the file is
    rewritten, so every line stays valid JSON for the scorers that read it.
    """
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = {}
    dropped = 0
    raw = path.read_bytes()
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_key = key(record)
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if record_key in records:  # the later write wins
            dropped += 1
        records[record_key] = record
    if dropped or (raw and not raw.endswith(b"\n")):
        if dropped:
            logger.warning("%s: dropped %d unreadable or duplicate lines", path, dropped)
        write_records(path, list(records.values()))
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line and flush, so a crash loses at most the line being written."""
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace the file atomically (write a temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def sort_records(path: Path, key: Callable[[dict[str, Any]], str], order: list[str]) -> None:
    """Rewrite the file in benchmark order (records arrive in completion order); records whose
    key is not in ``order`` keep their relative order at the end."""
    records = load_records(path, key)
    position = {record_key: index for index, record_key in enumerate(order)}
    ranked = sorted(records.items(), key=lambda item: position.get(item[0], len(position)))
    write_records(path, [record for _, record in ranked])


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    os.replace(tmp, path)
