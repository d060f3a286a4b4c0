"""AlpacaEval 2.0 data: the reference (baseline) outputs, model outputs, and their pairing.

Nothing here is copied into the repo: the 805 GPT-4-Turbo reference outputs are read from
`../shared/benchmarks/alpaca_eval/gpt4_1106_preview_outputs.json` (relative to the repo root)
when present, else from the hub dataset `tatsu-lab/alpaca_eval`, or from any path given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from evaluation.alpaca_eval.annotator import Comparison
from evaluation.settings import default_reference_outputs  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_REFERENCE_OUTPUTS = (
    REPO_ROOT.parent / "shared" / "benchmarks" / "alpaca_eval" / "gpt4_1106_preview_outputs.json"
)
HUB_REPO = "tatsu-lab/alpaca_eval"
# alpaca_eval's `get_alpaca_eval_data("alpaca_eval_gpt4_baseline")` (the AlpacaEval 2.0 baseline).
HUB_REFERENCE_FILE = "alpaca_eval_gpt4_baseline.json"
N_INSTRUCTIONS = 805




def load_reference_outputs(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Records `{instruction, output, generator, dataset}` from a JSON file or the hub."""
    path = Path(source)
    if not path.exists():
        if str(source) != HUB_REPO:
            raise FileNotFoundError(f"AlpacaEval reference outputs not found: {source}")
        from huggingface_hub import hf_hub_download  # only when actually going to the hub

        path = Path(hf_hub_download(HUB_REPO, HUB_REFERENCE_FILE, repo_type="dataset"))
    with path.open() as f:
        return json.load(f)


def model_output_records(
    outputs: Sequence[str] | Sequence[dict[str, Any]],
    references: Sequence[dict[str, Any]],
    generator: str,
) -> list[dict[str, Any]]:
    """alpaca_eval's `model_outputs.json` records, in reference order.

    `outputs` is either one string per reference instruction (same order), or dicts with
    `instruction` and `output` (any order, any subset; matched on the instruction text, which is
    unique among the 805).
    """
    if outputs and isinstance(outputs[0], str):
        if len(outputs) != len(references):
            raise ValueError(
                f"{len(outputs)} outputs for {len(references)} instructions: give one output per "
                "instruction, or dicts with `instruction` and `output`"
            )
        by_instruction = {ref["instruction"]: out for ref, out in zip(references, outputs)}
    else:
        by_instruction = {record["instruction"]: record["output"] for record in outputs}
    known = {ref["instruction"] for ref in references}
    unknown = [instruction for instruction in by_instruction if instruction not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} outputs answer no reference instruction: {unknown[:3]}")
    return [
        {
            "instruction": ref["instruction"],
            "output": by_instruction[ref["instruction"]],
            "generator": generator,
            "dataset": ref.get("dataset", ""),
        }
        for ref in references
        if ref["instruction"] in by_instruction
    ]


def write_model_outputs(path: str | os.PathLike, records: Sequence[dict[str, Any]]) -> Path:
    """Write `model_outputs.json` so the official tool can judge the same outputs:
    `alpaca_eval --model_outputs <path>`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(records), indent=2, ensure_ascii=False))
    return path


def make_comparisons(
    model_records: Sequence[dict[str, Any]], references: Sequence[dict[str, Any]]
) -> list[Comparison]:
    """Pair each model output with the reference output for the same instruction."""
    by_instruction = {record["instruction"]: record for record in model_records}
    comparisons = []
    for index, ref in enumerate(references):
        record = by_instruction.get(ref["instruction"])
        if record is None:
            continue
        comparisons.append(
            Comparison(
                index=index,
                instruction=ref["instruction"],
                dataset=ref.get("dataset", ""),
                output_1=ref["output"],
                generator_1=ref.get("generator", "reference"),
                output_2=record["output"],
                generator_2=record["generator"],
            )
        )
    return comparisons
