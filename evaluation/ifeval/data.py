"""Loading the 541 IFEval prompts, from a local input_data.jsonl or the Hugging Face hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HUB_DATASET = "google/IFEval"
# The shared benchmark copy sits next to the repository, never inside it.
DEFAULT_DATA_PATH = (
    Path(__file__).resolve().parents[3] / "shared/benchmarks/ifeval/input_data.jsonl"
)


def load_prompts(path_or_hub_name: str | Path | None = None) -> list[dict[str, Any]]:
    """IFEval records: {"key", "prompt", "instruction_id_list", "kwargs"} each.

    path_or_hub_name: a path to a jsonl file in the official format, or a hub
      dataset name (its "train" split, as lm_eval reads it). None means
      `DEFAULT_DATA_PATH` if it exists, else the hub's "google/IFEval".
    """
    if path_or_hub_name is None:
        path_or_hub_name = DEFAULT_DATA_PATH if DEFAULT_DATA_PATH.exists() else HUB_DATASET
    path = Path(path_or_hub_name)
    if path.exists():
        with path.open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]
    if path.suffix in (".jsonl", ".json") or isinstance(path_or_hub_name, Path):
        raise FileNotFoundError(f"IFEval data file not found: {path}")
    return _load_from_hub(str(path_or_hub_name))


def _load_from_hub(name: str) -> list[dict[str, Any]]:
    import datasets  # imported here: loading a local file should not need it

    rows = datasets.load_dataset(name, split="train")
    # The hub's kwargs rows carry every kwarg of the schema, unused ones as
    # None; `build_checker` drops those, exactly as for the jsonl.
    return [
        {
            "key": row["key"],
            "prompt": row["prompt"],
            "instruction_id_list": list(row["instruction_id_list"]),
            "kwargs": [dict(kwargs) for kwargs in row["kwargs"]],
        }
        for row in rows
    ]
