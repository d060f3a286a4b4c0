"""``metrics.jsonl``: one row per reported step, each step exactly once, across crashes and resumes.

A run that resumes from a checkpoint (a restarted Ray Train worker group, a rerun after the driver
was killed, ``checkpoint.resume_from`` into the same directory) reports again the steps it had
reported after that checkpoint. Steps only grow within one attempt, so a row whose step is not
past the last one written marks a restart: the rows from that step on belong to the abandoned
attempt and are cut before the new row goes in. A driver killed mid-append leaves a torn last
line, which is cut too. Readers therefore never see a step twice or a mix of two attempts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def repair_jsonl(path: Path) -> None:
    """Cut a torn last line (a process killed mid-append) so appends and reads go on cleanly."""
    if not path.exists():
        return
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        try:
            json.loads(data[keep:])
        except ValueError:
            with path.open("r+b") as f:
                f.truncate(keep)
        else:
            with path.open("ab") as f:
                f.write(b"\n")  # whole, but unterminated: the next append must start a new line


class MetricsLog:
    """Appends rows to ``path``; a row at or before the last written step first drops the rows
    of the abandoned attempt (those with that step or later)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        self._last_step: float | None = None
        for row in self._rows():
            self._last_step = row.get("step", self._last_step)
        self.rows_dropped = 0
        """Rows of abandoned attempts cut by this log (the steps a resumed run reported again)."""

    def _rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, row: dict[str, Any]) -> None:
        step = row.get("step")
        if step is not None and self._last_step is not None and step <= self._last_step:
            rows = self._rows()
            kept = [r for r in rows if r.get("step", -1) < step]
            self.rows_dropped += len(rows) - len(kept)
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(partial, self.path)  # a kill here leaves the old file or the new, never half
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if step is not None:
            self._last_step = step
