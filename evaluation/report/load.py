"""Reading a run directory (the layout `pipelines.run` writes) without ever failing on a gap.

Every piece is optional. A missing file is ``None``; an unreadable one is ``None`` plus a line in
``problems``, so the report can say "not run", "failed: see manifest" or "unreadable" in place.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
DATA_STATS = "data/data_stats.json"
BASE_INFO = "base/base_info.json"
WINRATE = "winrate.json"


@dataclass
class MethodData:
    """Everything one method left in a run directory."""

    run: str
    """The run's name (its directory name unless the manifest says otherwise)."""
    method: str
    """The method's directory name, e.g. "orpo"."""
    label: str
    """How tables and plots name it: the method, or ``<run>/<method>`` in a comparison."""
    metrics: list[dict[str, Any]] | None = None
    """``train/<method>/metrics.jsonl`` rows, in file order."""
    run_info: dict[str, Any] | None = None
    sweep_results: list[dict[str, Any]] | None = None
    sweep_best: dict[str, Any] | None = None
    eval_summary: dict[str, Any] | None = None
    missing: dict[str, str] = field(default_factory=dict)
    """Stage ("train", "sweep", "eval") -> why it has no output ("not run", "failed: see manifest")."""

    @property
    def loss_type(self) -> str:
        loss = (self.run_info or {}).get("loss") or {}
        return str(loss.get("type") or (self.run_info or {}).get("method") or self.method).lower()


@dataclass
class RunData:
    path: Path
    name: str
    manifest: dict[str, Any] | None
    data_stats: dict[str, Any] | None
    methods: dict[str, MethodData]
    problems: list[str] = field(default_factory=list)
    """Files that exist but could not be read, one line each."""
    data_missing: str | None = None
    base: dict[str, Any] | None = None
    """``base/base_info.json``: the pretrained base every method started from (None: no base stage)."""
    winrate: dict[str, Any] | None = None
    """``winrate.json``: each method's reward win rate against the baseline method."""


def read_json(path: Path, problems: list[str]) -> Any:
    """The parsed file, or None when absent; unreadable files are noted in ``problems``."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path}: unreadable ({type(error).__name__}: {error})")
        return None


def read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]] | None:
    """Rows of a JSON-lines file; a torn last line (a run still writing) is skipped and noted."""
    if not path.is_file():
        return None
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"{path}: unreadable ({type(error).__name__}: {error})")
        return None
    rows, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    if bad:
        problems.append(f"{path}: {bad} line(s) were not JSON objects and were skipped")
    return rows


def finite(value: Any) -> float | None:
    """A real number as float, else None (strings, None, bools, NaN and inf are not data)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def stage_status(
    manifest: dict[str, Any] | None, stage: str, method: str | None = None
) -> dict | None:
    """The manifest's record for a stage, per method when it keeps one ("train/orpo")."""
    stages = (manifest or {}).get("stages") or {}
    if not isinstance(stages, dict):
        return None
    keys = (
        [f"{stage}/{method}", f"{stage}:{method}", f"{stage}_{method}", f"{stage}.{method}"]
        if method
        else []
    )
    for key in keys + [stage]:
        record = stages.get(key)
        if isinstance(record, dict):
            return record
    return None


def missing_reason(manifest: dict[str, Any] | None, stage: str, method: str | None = None) -> str:
    """Why a stage's output is absent, in the words the report uses."""
    status = (stage_status(manifest, stage, method) or {}).get("status")
    if status == "failed":
        return "failed: see manifest"
    if status == "running":
        return "still running (no output yet)"
    if status == "pending":
        return "not run yet (pending)"
    if status == "done":
        return "marked done in the manifest, but its output is missing"
    return "not run"


def _method_names(path: Path, manifest: dict[str, Any] | None) -> list[str]:
    names: list[str] = []
    for name in (manifest or {}).get("methods") or []:
        if isinstance(name, str) and name not in names:
            names.append(name)
    for stage in ("train", "sweep", "eval"):
        stage_dir = path / stage
        if stage_dir.is_dir():
            for child in sorted(p.name for p in stage_dir.iterdir() if p.is_dir()):
                if child not in names:
                    names.append(child)
    return names


def load_run(path: str | Path, label_prefix: str | None = None) -> RunData:
    """Read one run directory. ``label_prefix`` (the run's name in a comparison) prefixes labels."""
    path = Path(path)
    problems: list[str] = []
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a run directory")
    manifest = read_json(path / MANIFEST, problems)
    if manifest is not None and not isinstance(manifest, dict):
        problems.append(f"{path / MANIFEST}: not a JSON object")
        manifest = None
    name = str((manifest or {}).get("name") or path.resolve().name)
    data_stats = read_json(path / DATA_STATS, problems)
    run = RunData(
        path=path,
        name=name,
        manifest=manifest,
        data_stats=data_stats,
        methods={},
        problems=problems,
    )
    if data_stats is None:
        run.data_missing = missing_reason(manifest, "data")
    run.base = _typed(path / BASE_INFO, dict, problems)
    run.winrate = _typed(path / WINRATE, dict, problems)
    for method in _method_names(path, manifest):
        label = f"{label_prefix}/{method}" if label_prefix else method
        data = MethodData(run=name, method=method, label=label)
        train, sweep, evaluation = (
            path / "train" / method,
            path / "sweep" / method,
            path / "eval" / method,
        )
        data.metrics = read_jsonl(train / "metrics.jsonl", problems)
        data.run_info = _typed(train / "run_info.json", dict, problems)
        data.sweep_results = _typed(sweep / "results.json", list, problems)
        data.sweep_best = _typed(sweep / "best.json", dict, problems)
        data.eval_summary = _typed(evaluation / "summary.json", dict, problems)
        outputs = {
            "train": (
                [data.metrics, data.run_info],
                [train / "metrics.jsonl", train / "run_info.json"],
            ),
            "sweep": (
                [data.sweep_results, data.sweep_best],
                [sweep / "results.json", sweep / "best.json"],
            ),
            "eval": ([data.eval_summary], [evaluation / "summary.json"]),
        }
        for stage, (values, files) in outputs.items():
            if all(v is None for v in values):
                data.missing[stage] = (
                    "output unreadable (see Gaps and problems)"
                    if any(f.is_file() for f in files)
                    else missing_reason(manifest, stage, method)
                )
        run.methods[method] = data
    return run


def _typed(path: Path, kind: type, problems: list[str]) -> Any:
    """``read_json`` that also rejects the wrong top-level type (a list where a dict belongs)."""
    value = read_json(path, problems)
    if value is not None and not isinstance(value, kind):
        problems.append(f"{path}: expected a JSON {'object' if kind is dict else 'list'}")
        return None
    return value


def _dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None
