"""The report's tables, built from run data: number formats in one place, one builder per table.

Formats (tests rely on them): log-probs and sweep objectives with 4 decimals; IFEval fractions as
percent with 2 decimals; AlpacaEval win rates and MT-Bench scores with 2 decimals; counts with
thousands separators; FLOPs as ``1.234e+15``. A value that is absent is "—".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evaluation.report.load import MethodData, RunData, finite
from evaluation.report.published import references
from evaluation.report.render import Table
from evaluation.report.summary import IFEVAL_METRICS, series

DASH = "—"
IFEVAL_NAMES = {
    "prompt_level_strict_acc": "prompt strict",
    "prompt_level_loose_acc": "prompt loose",
    "inst_level_strict_acc": "inst. strict",
    "inst_level_loose_acc": "inst. loose",
}


# ---- formats ----------------------------------------------------------------------------------


def num(value: Any, digits: int = 4) -> str:
    v = finite(value)
    return DASH if v is None else f"{v:.{digits}f}"


def signed(value: Any, digits: int = 4) -> str:
    v = finite(value)
    return DASH if v is None else f"{v:+.{digits}f}"


def percent_of_fraction(value: Any) -> str:
    v = finite(value)
    return DASH if v is None else f"{v * 100:.2f}"


def count(value: Any) -> str:
    v = finite(value)
    return DASH if v is None else f"{v:,.0f}"


def flops(value: Any) -> str:
    v = finite(value)
    return DASH if v is None else f"{v:.3e}"


def seconds(value: Any) -> str:
    v = finite(value)
    if v is None:
        return DASH
    if v < 120:
        return f"{v:.1f} s"
    return f"{v:,.1f} s ({v / 3600:.2f} h)" if v >= 3600 else f"{v:,.1f} s ({v / 60:.1f} min)"


def step(value: Any) -> str:
    v = finite(value)
    return DASH if v is None else (f"{v:.0f}" if v == int(v) else f"{v:g}")


def param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _missing_row(label: str, reason: str, width: int) -> list[str]:
    return [label, reason] + [DASH] * (width - 2)


# ---- config and environment -------------------------------------------------------------------


def key_values(mapping: dict[str, Any] | None, key_header: str, value_header: str) -> Table | None:
    if not mapping:
        return None
    rows = []
    for key, value in mapping.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(_grouped(value)) or DASH
        rows.append([str(key), DASH if value is None else str(value)])
    return Table([key_header, value_header], rows)


def _grouped(items: Iterable[Any]) -> list[str]:
    counts: dict[str, int] = {}
    for item in items:
        counts[str(item)] = counts.get(str(item), 0) + 1
    return [f"{n} × {name}" if n > 1 else name for name, n in counts.items()]


def stages(manifest: dict[str, Any] | None) -> Table | None:
    records = (manifest or {}).get("stages") or {}
    if not isinstance(records, dict) or not records:
        return None
    rows = []
    for name, record in records.items():
        record = record if isinstance(record, dict) else {}
        rows.append(
            [
                str(name),
                str(record.get("status", DASH)),
                str(record.get("started") or DASH),
                str(record.get("finished") or DASH),
                seconds(record.get("wall_s")),
            ]
        )
    return Table(["stage", "status", "started", "finished", "wall time"], rows)


# ---- data -------------------------------------------------------------------------------------

DATA_FIELDS = (
    ("read", "records read"),
    ("accepted", "accepted"),
    ("rejected", "rejected"),
    ("train_pairs", "training pairs"),
    ("eval_pairs", "held-out eval pairs"),
    ("truncated", "truncated"),
)


def data_counts(runs: list[RunData]) -> Table:
    headers = ["", *(r.name for r in runs)]
    rows = []
    for key, name in DATA_FIELDS:
        rows.append(
            [
                name,
                *(
                    count((r.data_stats or {}).get(key))
                    if r.data_stats
                    else (r.data_missing or DASH)
                    for r in runs
                ),
            ]
        )
    return Table(headers, rows)


def reject_reasons(runs: list[RunData]) -> Table | None:
    reasons: dict[str, None] = {}
    for run in runs:
        for reason in (run.data_stats or {}).get("rejected_by_reason") or {}:
            reasons[str(reason)] = None
    if not reasons:
        return None
    by_run = [(r.data_stats or {}).get("rejected_by_reason") or {} for r in runs]
    ordered = sorted(reasons, key=lambda k: -sum(finite(b.get(k)) or 0 for b in by_run))
    # A run without data stats shows "—", never 0: absent is not zero.
    rows = [[reason, *(count(b.get(reason)) for b in by_run)] for reason in ordered]
    return Table(["rejection reason", *(r.name for r in runs)], rows)


# ---- training ---------------------------------------------------------------------------------

FINAL_COLUMNS = (
    ("loss", "loss"),
    ("nll", "NLL"),
    ("log_odds_ratio", "log σ(log-odds)"),
    ("rewards/margins", "reward margin"),
    ("rewards/accuracies", "reward acc."),
    ("eval/loss", "eval loss"),
    ("eval/rewards/accuracies", "eval reward acc."),
)


def final_training(methods: list[MethodData]) -> Table:
    headers = ["method", "last step", *(name for _, name in FINAL_COLUMNS)]
    rows = []
    for m in methods:
        if m.metrics is None:
            rows.append(_missing_row(m.label, m.missing.get("train", "not run"), len(headers)))
            continue
        steps = [finite(r.get("step")) for r in m.metrics if finite(r.get("step")) is not None]
        cells = [m.label, step(max(steps)) if steps else DASH]
        for key, _ in FINAL_COLUMNS:
            _, values = series(m.metrics, key)
            cells.append(num(values[-1]) if values else DASH)
        rows.append(cells)
    return Table(
        headers, rows, caption="Last logged value of each metric (— : not logged by this method)."
    )


# ---- benchmarks -------------------------------------------------------------------------------


def _bench(method: MethodData, name: str) -> dict[str, Any] | None:
    block = (method.eval_summary or {}).get(name)
    return block if isinstance(block, dict) else None


def _bench_missing(method: MethodData, name: str) -> str:
    if method.eval_summary is None:
        return method.missing.get("eval", "not run")
    return "not run"


def ifeval(methods: list[MethodData]) -> Table:
    headers = [
        "model",
        *(IFEVAL_NAMES[k] + " (%)" for k in IFEVAL_METRICS),
        "prompts",
        "unscorable instr.",
    ]
    rows = []
    for m in methods:
        block = _bench(m, "ifeval")
        if block is None:
            rows.append(_missing_row(m.label, _bench_missing(m, "ifeval"), len(headers)))
            continue
        rows.append(
            [
                m.label,
                *(percent_of_fraction(block.get(k)) for k in IFEVAL_METRICS),
                count(block.get("num_prompts")),
                count(block.get("num_unscorable_instructions")),
            ]
        )
    first_reference = len(rows)
    for ref in references("ifeval"):
        rows.append(
            [
                ref.label,
                *(percent_of_fraction(ref.values.get(k)) for k in IFEVAL_METRICS),
                DASH,
                DASH,
            ]
        )
    return Table(headers, rows, reference=set(range(first_reference, len(rows))))


def ifeval_categories(methods: list[MethodData]) -> Table | None:
    per_method = {m.label: (_bench(m, "ifeval") or {}).get("per_category") or {} for m in methods}
    per_method = {k: v for k, v in per_method.items() if isinstance(v, dict) and v}
    if not per_method:
        return None
    categories = sorted({c for table in per_method.values() for c in table})
    headers, columns = ["category"], []
    for label, table in per_method.items():
        present = [
            k
            for k in IFEVAL_METRICS
            if any(isinstance(row, dict) and k in row for row in table.values())
        ]
        headers.append(f"{label}: " + " / ".join(IFEVAL_NAMES[k] for k in present) + " (%)")
        columns.append((table, present))
    rows = []
    for category in categories:
        cells = [category]
        for table, present in columns:
            row = table.get(category)
            cells.append(
                " / ".join(percent_of_fraction(row.get(k)) for k in present)
                if isinstance(row, dict)
                else DASH
            )
        rows.append(cells)
    return Table(headers, rows)


def alpaca_eval(methods: list[MethodData]) -> Table:
    headers = [
        "model",
        "win rate (%)",
        "std. error",
        "LC win rate (%)",
        "LC std. error",
        "n scored",
        "judge",
        "comparable to leaderboard",
    ]
    rows = []
    for m in methods:
        block = _bench(m, "alpaca_eval")
        if block is None:
            rows.append(_missing_row(m.label, _bench_missing(m, "alpaca_eval"), len(headers)))
            continue
        comparable = block.get("comparable_to_leaderboard")
        rows.append(
            [
                m.label,
                num(block.get("win_rate"), 2),
                num(block.get("standard_error"), 2),
                num(block.get("length_controlled_winrate"), 2),
                num(block.get("lc_standard_error"), 2),
                count(block.get("n_total")),
                str(block.get("judge_model") or DASH),
                DASH if comparable is None else ("yes" if comparable else "no"),
            ]
        )
    first_reference = len(rows)
    for ref in references("alpaca_eval"):
        v = ref.values
        rows.append(
            [
                ref.label,
                num(v.get("win_rate"), 2),
                num(v.get("standard_error"), 2),
                num(v.get("length_controlled_winrate"), 2),
                num(v.get("lc_standard_error"), 2),
                DASH,
                ref.judge or DASH,
                "published",
            ]
        )
    return Table(headers, rows, reference=set(range(first_reference, len(rows))))


def mt_bench(methods: list[MethodData]) -> Table:
    headers = [
        "model",
        "turn 1",
        "turn 2",
        "average",
        "n scored",
        "unparseable",
        "judge",
        "comparable to FastChat",
    ]
    rows = []
    for m in methods:
        block = _bench(m, "mt_bench")
        if block is None:
            rows.append(_missing_row(m.label, _bench_missing(m, "mt_bench"), len(headers)))
            continue
        comparable = block.get("comparable_to_leaderboard")
        rows.append(
            [
                m.label,
                num(block.get("turn_1"), 2),
                num(block.get("turn_2"), 2),
                num(block.get("overall"), 2),
                count(block.get("n_scored")),
                count(block.get("n_unparseable")),
                str(block.get("judge_model") or DASH),
                DASH if comparable is None else ("yes" if comparable else "no"),
            ]
        )
    first_reference = len(rows)
    for ref in references("mt_bench"):
        v = ref.values
        rows.append(
            [
                ref.label,
                num(v.get("turn_1"), 2),
                num(v.get("turn_2"), 2),
                num(v.get("overall"), 2),
                DASH,
                DASH,
                ref.judge or DASH,
                "published",
            ]
        )
    return Table(headers, rows, reference=set(range(first_reference, len(rows))))


def mt_bench_categories(methods: list[MethodData]) -> Table | None:
    by_method = {m.label: (_bench(m, "mt_bench") or {}).get("by_category") or {} for m in methods}
    by_method = {k: v for k, v in by_method.items() if isinstance(v, dict) and v}
    if not by_method:
        return None
    categories = sorted({c for scores in by_method.values() for c in scores})
    rows = [[c, *(num(scores.get(c), 2) for scores in by_method.values())] for c in categories]
    return Table(["category", *by_method], rows)


def comparability_notes(methods: list[MethodData], benchmark: str) -> list[str]:
    notes = []
    for m in methods:
        block = _bench(m, benchmark) or {}
        reasons = block.get("comparability")
        if isinstance(reasons, list) and reasons:
            notes.append(f"**{m.label}**: " + "; ".join(str(r) for r in reasons))
    return notes


# ---- compute ----------------------------------------------------------------------------------


def compute(methods: list[MethodData]) -> Table:
    headers = [
        "method",
        "wall time",
        "workers",
        "worker-hours",
        "tokens processed",
        "parameters",
        "forward passes / pair",
        "est. FLOPs",
        "reference-model FLOPs",
        "reference share",
    ]
    rows = []
    for m in methods:
        info = m.run_info
        if info is None:
            rows.append(
                _missing_row(m.label, m.missing.get("train", "no run_info.json"), len(headers))
            )
            continue
        total, reference = finite(info.get("flops_estimate")), finite(info.get("reference_flops"))
        share = f"{reference / total * 100:.1f}%" if total and reference is not None else DASH
        rows.append(
            [
                m.label,
                seconds(info.get("wall_s")),
                count(info.get("num_workers")),
                num(info.get("worker_hours"), 3),
                count(info.get("tokens_processed")),
                count(info.get("n_params")),
                count(info.get("forward_passes_per_pair")),
                flops(total),
                flops(reference),
                share,
            ]
        )
    return Table(headers, rows)
