"""Reading source files for Ray Data in pieces that run in parallel: JSONL byte ranges cut at line
boundaries, Parquet row groups. Every record keeps its file's label and its row in that file.

A file used to be one read task, so one large file was read and tokenized on one CPU. Now
``plan_pieces`` cuts each JSONL file into byte ranges and each Parquet file into runs of row
groups (about ``READ_TASKS_PER_CPU`` pieces per CPU of the cluster, none smaller than
``data_pipeline.min_read_bytes``). A record's row is its position in its file (non-blank JSONL
lines, JSON list items, Parquet rows), as in the single-process reader (``orpo.sources``): the
rows before a JSONL piece are counted by a parallel scan of the ranges first, so rejects name the
same line and the train/eval hash sees the same row under both launchers. ``data.limit`` keeps
the first N records in file order by cutting the plan, not the stream.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ray

from orpo.data import RejectReason
from orpo.sources import expand_files, source_label, too_large

READ_CHUNK_ROWS = 1024
"""Records per chunk a read task emits."""
READ_TASKS_PER_CPU = 4
"""Pieces per CPU slot of the cluster: enough that a slow piece does not leave CPUs idle."""
IO_BYTES = 1 << 20
# Carries an unreadable line's reason through the JSON column (no real record has this key).
UNREADABLE_MARKER = "__orpo_unreadable__"


def is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), path)


def list_source_files(source: str) -> list[str]:
    """Files of a local path/dir/glob, or of an object-store URI (``s3://bucket/prefix``)."""
    if not is_uri(source):
        return [source_label(source, "", f) for f in expand_files(source)]
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        scheme = source.split("://", 1)[0]
        files = sorted(f"{scheme}://{i.path}" for i in infos if i.path.endswith((".jsonl", ".json", ".parquet")))
    else:
        files = [source] if info.type == pafs.FileType.File else []
    if not files:
        raise FileNotFoundError(f"data source '{source}' matches no .jsonl/.json/.parquet files")
    return files


@dataclass(frozen=True)
class Piece:
    """One read task's share of one file."""

    path: str
    label: str
    """The file's source label: names its records in rejects and seeds the train/eval split."""
    start: int
    """JSONL: first byte (a line start); Parquet: first row group; JSON: 0."""
    end: int
    """JSONL: the byte after its last line; Parquet: the row group after its last; JSON: 0."""
    first_row: int
    """Row (in the file) of the piece's first record."""
    rows: int
    """Records in the piece; -1 where unknown (a JSON document not counted because no limit was set)."""


# ---------------------------------------------------------------------------------------------
# Lines of a byte range
# ---------------------------------------------------------------------------------------------


def _next_line_start(f, offset: int, size: int) -> int:
    """The first line start at or after ``offset`` (``size`` if none)."""
    if offset <= 0:
        return 0
    f.seek(offset - 1)
    position = offset - 1
    while chunk := f.read(IO_BYTES):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(chunk)
    return size


def _lines(f, start: int, end: int) -> Iterator[bytes]:
    """The lines (without ``\\n``) of ``[start, end)``, both line starts; linear even for a 50 MB line."""
    f.seek(start)
    remaining, parts = end - start, []
    while remaining > 0 and (chunk := f.read(min(IO_BYTES, remaining))):
        remaining -= len(chunk)
        newline = chunk.rfind(b"\n")
        if newline < 0:
            parts.append(chunk)
            continue
        head = b"".join([*parts, chunk[:newline]])
        parts = [chunk[newline + 1:]]
        yield from head.split(b"\n")
    if tail := b"".join(parts):
        yield tail


def _scan_range(path: str, start: int, end: int, size: int) -> tuple[int, int, int]:
    """The lines starting in ``[start, end)``: their byte span (line-aligned) and non-blank count."""
    fs, fs_path = _filesystem(path)
    with fs.open_input_file(fs_path) as f:
        first, last = _next_line_start(f, start, size), _next_line_start(f, end, size)
        count = sum(1 for line in _lines(f, first, last) if line.strip()) if first < last else 0
    return first, last, count


def _count_json(path: str) -> int:
    return sum(1 for _ in _iter_json(path))


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


def plan_pieces(files: list[str], labels: dict[str, str], min_piece_bytes: int, task_num_cpus: float,
                limit: int | None = None) -> list[Piece]:
    """Pieces covering ``files`` in order (the first ``limit`` records when set)."""
    fs_sizes = {path: _file_size(path) for path in files}
    slots = max(1, math.floor(ray.cluster_resources().get("CPU", 1.0) / task_num_cpus))
    piece_bytes = max(min_piece_bytes, math.ceil(sum(fs_sizes.values()) / (slots * READ_TASKS_PER_CPU)))
    scan = ray.remote(_scan_range).options(num_cpus=task_num_cpus)
    count_json = ray.remote(_count_json).options(num_cpus=task_num_cpus)
    # Start every scan before waiting on any; Parquet footers are read here, in the driver.
    planned: list[tuple[str, str, Any]] = []  # (path, kind, what to plan it from), in file order
    for path in files:
        size = fs_sizes[path]
        if path.endswith(".parquet"):
            planned.append((path, "pieces", _parquet_pieces(path, labels.get(path, path), size, piece_bytes)))
        elif path.endswith(".json"):  # one document, one piece: counted only to cut it at a limit
            planned.append((path, "json", count_json.remote(path) if limit is not None else None))
        else:
            cuts = range(0, size, piece_bytes)
            planned.append((path, "ranges", [scan.remote(path, cut, min(cut + piece_bytes, size), size)
                                             for cut in cuts]))
    pieces: list[Piece] = []
    for path, kind, plan in planned:
        label = labels.get(path, path)
        if kind == "pieces":
            pieces += plan
        elif kind == "json":
            pieces.append(Piece(path, label, 0, 0, 0, -1 if plan is None else ray.get(plan)))
        else:
            row = 0
            for first, last, count in ray.get(plan):
                if count:
                    pieces.append(Piece(path, label, first, last, row, count))
                row += count
    return _first_records(pieces, limit) if limit is not None else pieces


def _file_size(path: str) -> int:
    fs, fs_path = _filesystem(path)
    return fs.get_file_info(fs_path).size


def _parquet_pieces(path: str, label: str, size: int, piece_bytes: int) -> list[Piece]:
    """Runs of whole row groups, about ``piece_bytes`` of the file each (the footer alone is read)."""
    import pyarrow.parquet as pq

    fs, fs_path = _filesystem(path)
    with fs.open_input_file(fs_path) as f:
        metadata = pq.ParquetFile(f).metadata
    group_rows = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    n_pieces = max(1, min(len(group_rows), math.ceil(size / piece_bytes)))
    bounds = [round(i * len(group_rows) / n_pieces) for i in range(n_pieces + 1)]
    pieces, row = [], 0
    for start, end in itertools.pairwise(bounds):
        rows = sum(group_rows[start:end])
        if rows:
            pieces.append(Piece(path, label, start, end, row, rows))
        row += rows
    return pieces


def _first_records(pieces: list[Piece], limit: int) -> list[Piece]:
    kept, remaining = [], limit
    for piece in pieces:
        if remaining <= 0:
            break
        kept.append(piece if piece.rows <= remaining else Piece(**{**asdict(piece), "rows": remaining}))
        remaining -= piece.rows
    return kept


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_pieces(pieces: list[Piece], max_record_bytes: int, task_num_cpus: float) -> ray.data.Dataset:
    """A dataset of ``{record_json, source, row}``: one task per piece, streaming it out in chunks."""
    return ray.data.from_items([asdict(p) for p in pieces], override_num_blocks=len(pieces)).map_batches(
        _read_piece_chunks, batch_size=1, num_cpus=task_num_cpus, fn_kwargs={"max_record_bytes": max_record_bytes})


def _read_piece_chunks(batch: dict[str, np.ndarray], max_record_bytes: int) -> Iterator[dict[str, list]]:
    """Generator UDF: one piece in, chunks of ``{record_json, source, row}`` out."""
    piece = Piece(**{key: (str(values[0]) if key in ("path", "label") else int(values[0]))
                     for key, values in batch.items()})
    records, row = [], piece.first_row
    for record_json in _iter_piece(piece, max_record_bytes):
        records.append(record_json)
        if len(records) == READ_CHUNK_ROWS:
            yield _chunk(records, piece.label, row)
            row += len(records)
            records = []
        if piece.rows >= 0 and row + len(records) - piece.first_row >= piece.rows:
            break
    if records:
        yield _chunk(records, piece.label, row)


def _chunk(records: list[str], label: str, first_row: int) -> dict[str, list]:
    return {"record_json": records, "source": [label] * len(records),
            "row": list(range(first_row, first_row + len(records)))}


def _iter_piece(piece: Piece, max_record_bytes: int) -> Iterator[str]:
    """Each record of a piece as a JSON string (unreadable JSONL lines pass through as markers)."""
    import pyarrow.parquet as pq

    if piece.path.endswith(".json"):
        yield from _iter_json(piece.path)
        return
    fs, fs_path = _filesystem(piece.path)
    with fs.open_input_file(fs_path) as f:
        if piece.path.endswith(".parquet"):
            batches = pq.ParquetFile(f).iter_batches(batch_size=READ_CHUNK_ROWS,
                                                     row_groups=range(piece.start, piece.end))
            for record_batch in batches:
                for record in record_batch.to_pylist():
                    yield json.dumps(record, default=str)
            return
        yield from (_line_json(line, max_record_bytes) for line in _lines(f, piece.start, piece.end)
                    if line.strip())


def _iter_json(path: str) -> Iterator[str]:
    fs, fs_path = _filesystem(path)
    with fs.open_input_stream(fs_path) as f:
        try:
            data = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a UTF-8 JSON document: {error}") from None
    for record in data if isinstance(data, list) else [data]:
        yield json.dumps(record)


def _line_json(line: bytes, max_record_bytes: int) -> str:
    """A JSONL line as JSON text; an oversized or undecodable line becomes a marker the tokenizer
    rejects (an oversized one is never decoded, nor shipped to the tokenizer)."""
    size = len(line.rstrip(b"\r"))
    if size > max_record_bytes:
        unread = too_large(size, max_record_bytes)
        return unreadable_json(unread.reason, unread.detail)
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as error:
        return unreadable_json(RejectReason.NOT_UTF8, f"not UTF-8: {error}")


def unreadable_json(reason: RejectReason, detail: str) -> str:
    return json.dumps({UNREADABLE_MARKER: {"reason": reason.value, "detail": detail}})
