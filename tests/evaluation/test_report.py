"""The benchmark report on fake run directories with known numbers.

Two runs are built in tmp_path. "good": ORPO's held-out rejected log-prob falls -1.3 -> -1.6 -> -1.9
(change -0.6) while SFT's rises -1.3 -> -1.1 -> -0.95 (change +0.35), and ORPO's IFEval
prompt-level strict accuracy 0.60 >= SFT's 0.45, so the effect verdict is True; it also has a DPO
run (run_info: 4.0e12 reference FLOPs of 1.4e13 -> 28.6%), a 3-trial λ sweep (best λ = 0.1,
eval/loss 0.85) and a failed DPO eval stage. "bad": ORPO's rejected log-prob rises
(-1.3 -> -1.2, +0.1) and SFT's falls, and ORPO's IFEval 0.40 < SFT's 0.50: verdict False; no
sweep, no data stats (the data stage failed) and no DPO, so the FLOPs saving is the formula's 25%.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from evaluation.report import build_report, write_summary
from evaluation.report.published import REFERENCES
from pipelines import report as report_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- fake run directories ---------------------------------------------------------------------


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _metrics(path: Path, chosen: list[float], rejected: list[float], kind: str) -> None:
    """Eval rows at steps 0, 50, 100 with the given log-probs; train rows every 10 steps."""
    rows = []
    offset = {"orpo": 0.0, "sft": -0.15, "dpo": 0.2}[kind]
    for step in range(10, 101, 10):
        row = {
            "step": step,
            "loss": 2.0 + offset - step / 100,
            "nll": 1.8 + offset - step / 120,
            "lr": 8e-6,
            "grad_norm": 1.0,
            "tokens_per_s": 1000.0,
            "tokens_seen": step * 512.0,
            "padding_fraction": 0.2,
            "logps/chosen": -1.1 + step / 500,
            "logps/rejected": -1.3,
        }
        if kind != "sft":
            row.update(
                {
                    "rewards/chosen": -0.1,
                    "rewards/rejected": -0.2,
                    "rewards/margins": step / 1000,
                    "rewards/accuracies": 0.5 + step / 400,
                }
            )
        if kind == "orpo":
            row.update({"log_odds_ratio": -0.7 + step / 1000, "log_odds": step / 200})
        rows.append(row)
    for step, c, r in zip((0, 50, 100), chosen, rejected):
        eval_row = {
            "eval/loss": 2.1 + offset - step / 100,
            "eval/logps/chosen": c,
            "eval/logps/rejected": r,
        }
        if kind != "sft":
            eval_row["eval/rewards/accuracies"] = 0.5 + step / 500
        existing = next((x for x in rows if x["step"] == step), None)
        if existing is None:
            rows.append({"step": step, **eval_row})
        else:
            existing.update(eval_row)  # a row may carry both
    rows.sort(key=lambda x: x["step"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))


def _run_info(method: str, flops: float, reference: float) -> dict:
    return {
        "method": method,
        "loss": {"type": method, "lam": 0.1, "beta": 0.1},
        "wall_s": 120.5,
        "num_workers": 2,
        "worker_hours": 0.067,
        "tokens_processed": 2_000_000,
        "n_params": 1_000_000,
        "forward_passes_per_pair": 2 if method == "dpo" else 1,
        "flops_estimate": flops,
        "reference_flops": reference,
    }


def _ifeval(prompt_strict: float, prompt_loose: float) -> dict:
    return {
        "prompt_level_strict_acc": prompt_strict,
        "prompt_level_loose_acc": prompt_loose,
        "inst_level_strict_acc": 0.7,
        "inst_level_loose_acc": 0.75,
        "per_category": {
            "keywords": {
                "inst_level_strict_acc": 0.8,
                "inst_level_loose_acc": 0.9,
                "num_instructions": 10,
            },
            "length_constraints": {
                "inst_level_strict_acc": 0.5,
                "inst_level_loose_acc": 0.6,
                "num_instructions": 10,
            },
        },
        "num_prompts": 20,
        "num_unscorable_instructions": 0,
    }


ALPACA = {
    "win_rate": 12.34,
    "standard_error": 1.23,
    "length_controlled_winrate": 15.67,
    "lc_standard_error": 0.89,
    "n_total": 20,
    "judge_model": "fixture-judge",
    "comparable_to_leaderboard": False,
    "comparability": [
        "FIXTURE judge: deterministic test double, not an evaluation",
        "20 of the 805 instructions",
    ],
}
MT_BENCH = {
    "overall": 6.5,
    "turn_1": 6.75,
    "turn_2": 6.25,
    "n_scored": 160,
    "n_unparseable": 0,
    "judge_model": "fixture-judge",
    "comparable_to_leaderboard": False,
    "comparability": ["FIXTURE judge: deterministic test double, not an evaluation"],
    "by_category": {
        "writing": 7.0,
        "roleplay": 6.5,
        "reasoning": 5.5,
        "math": 4.0,
        "coding": 5.0,
        "extraction": 6.0,
        "stem": 7.5,
        "humanities": 8.5,
    },
}


def make_good_run(root: Path) -> Path:
    run = root / "good"
    _write(
        run / "manifest.json",
        {
            "name": "good",
            "config": {
                "model": {"path": "tiny"},
                "loss": {"type": "orpo", "lam": 0.1},
                "optim": {"lr": 8e-6},
            },
            "versions": {
                "python": "3.11.2",
                "torch": "2.13.0",
                "transformers": "5.0.0",
                "ray": "2.60.0",
                "deepspeed": "0.19.0",
                "orpo-pipeline": "0.1.0",
            },
            "hardware": {
                "platform": "Linux-x86_64",
                "cpu_count": 16,
                "memory_gb": 128.0,
                "gpus": ["NVIDIA H100", "NVIDIA H100"],
            },
            "inputs": {"data/ultrafeedback.jsonl": "ab12cd34" * 8},
            "methods": ["orpo", "sft", "dpo"],
            "stages": {
                "data": {
                    "status": "done",
                    "started": "2025-01-01T00:00:00Z",
                    "finished": "2025-01-01T00:01:00Z",
                    "wall_s": 60.0,
                },
                "train/orpo": {
                    "status": "done",
                    "started": "2025-01-01T00:01:00Z",
                    "finished": "2025-01-01T00:03:00Z",
                    "wall_s": 120.5,
                },
                "sweep/orpo": {
                    "status": "done",
                    "started": "2025-01-01T00:03:00Z",
                    "finished": "2025-01-01T01:03:00Z",
                    "wall_s": 3600.0,
                },
                "eval/dpo": {
                    "status": "failed",
                    "started": "2025-01-01T02:00:00Z",
                    "finished": None,
                    "wall_s": None,
                },
            },
        },
    )
    _write(
        run / "data" / "data_stats.json",
        {
            "read": 1000,
            "accepted": 950,
            "rejected": 50,
            "rejected_by_reason": {"identical_pair": 20, "empty_response": 30},
            "train_pairs": 900,
            "eval_pairs": 50,
            "truncated": 7,
        },
    )
    _metrics(run / "train/orpo/metrics.jsonl", [-1.1, -0.95, -0.85], [-1.3, -1.6, -1.9], "orpo")
    _metrics(run / "train/sft/metrics.jsonl", [-1.1, -0.9, -0.8], [-1.3, -1.1, -0.95], "sft")
    _metrics(run / "train/dpo/metrics.jsonl", [-1.1, -1.0, -0.9], [-1.3, -1.5, -1.7], "dpo")
    _write(run / "train/orpo/run_info.json", _run_info("orpo", 1.2e13, 0.0))
    _write(run / "train/sft/run_info.json", _run_info("sft", 1.2e13, 0.0))
    _write(run / "train/dpo/run_info.json", _run_info("dpo", 1.4e13, 4.0e12))
    trials = [(0.05, 0.91), (0.1, 0.85), (0.5, 0.88)]
    _write(
        run / "sweep/orpo/results.json",
        [
            {
                "trial_id": f"t{i}",
                "config": {"loss.lam": lam, "optim.lr": 8e-6},
                "metrics": {"eval/loss": loss, "eval/rewards/accuracies": 0.6},
                "status": "TERMINATED",
            }
            for i, (lam, loss) in enumerate(trials)
        ],
    )
    _write(
        run / "sweep/orpo/best.json",
        {
            "metric": "eval/loss",
            "mode": "min",
            "value": 0.85,
            "config": {"loss.lam": 0.1, "optim.lr": 8e-6},
            "export_dir": "runs/good/sweep/orpo/best",
        },
    )
    _write(
        run / "eval/orpo/summary.json",
        {
            "model": "orpo",
            "generations": {},
            "ifeval": _ifeval(0.6, 0.65),
            "alpaca_eval": ALPACA,
            "mt_bench": MT_BENCH,
        },
    )
    _write(
        run / "eval/sft/summary.json",
        {"model": "sft", "generations": {}, "ifeval": _ifeval(0.45, 0.5)},
    )
    return run


def make_bad_run(root: Path) -> Path:
    run = root / "bad"
    _write(
        run / "manifest.json",
        {
            "name": "bad",
            "config": {"loss": {"type": "orpo", "lam": 0.1}},
            "versions": {"python": "3.11.2"},
            "hardware": {"platform": "Linux", "cpu_count": 2, "memory_gb": 8.0, "gpus": []},
            "inputs": {},
            "methods": ["orpo", "sft"],
            "stages": {
                "data": {
                    "status": "failed",
                    "started": "2025-01-02T00:00:00Z",
                    "finished": None,
                    "wall_s": None,
                }
            },
        },
    )
    _metrics(run / "train/orpo/metrics.jsonl", [-1.1, -1.0, -0.9], [-1.3, -1.25, -1.2], "orpo")
    _metrics(run / "train/sft/metrics.jsonl", [-1.1, -0.9, -0.8], [-1.3, -1.4, -1.5], "sft")
    _write(run / "train/orpo/run_info.json", _run_info("orpo", 1.2e13, 0.0))
    _write(run / "eval/orpo/summary.json", {"model": "orpo", "ifeval": _ifeval(0.4, 0.45)})
    _write(run / "eval/sft/summary.json", {"model": "sft", "ifeval": _ifeval(0.5, 0.55)})
    return run


# ---- helpers ----------------------------------------------------------------------------------


def md_section(markdown: str, heading: str) -> str:
    """The text under a Markdown heading (any level) up to the next heading of that level or higher."""
    lines = markdown.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.lstrip("#").strip() == heading and line.startswith("#")
    )
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
        ),
        len(lines),
    )
    return "\n".join(lines[start + 1 : end])


def md_row(section: str, label: str) -> list[str]:
    """Cells of the table row whose first cell is ``label`` (bold/italic marks removed)."""
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [c.strip().strip("*").strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == label or cells[0] == f"★ {label}":
                return cells
    raise AssertionError(f"no row {label!r} in:\n{section}")


class _Resources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.references: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if tag == "img" and name == "src":
                self.images.append(value or "")
            elif name in ("src", "href", "srcset", "data", "poster", "action"):
                self.references.append((tag, name, value or ""))
        if tag in ("link", "script", "iframe", "object", "embed"):
            self.references.append((tag, "tag", ""))


# ---- tests ------------------------------------------------------------------------------------


def test_single_run_summary_matches_inputs(tmp_path):
    run = make_good_run(tmp_path)
    paths = build_report([run], run)
    assert paths == {
        "markdown": run / "report.md",
        "html": run / "report.html",
        "summary": run / "summary.json",
    }
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    summary = json.loads((run / "summary.json").read_text())
    orpo, sft = summary["methods"]["orpo"], summary["methods"]["sft"]
    assert (orpo["logps"]["chosen_initial"], orpo["logps"]["chosen_final"]) == (-1.1, -0.85)
    assert (orpo["logps"]["rejected_initial"], orpo["logps"]["rejected_final"]) == (-1.3, -1.9)
    assert (orpo["logps"]["initial_step"], orpo["logps"]["final_step"]) == (0, 100)
    assert (sft["logps"]["rejected_initial"], sft["logps"]["rejected_final"]) == (-1.3, -0.95)
    assert (
        orpo["ifeval"]["prompt_level_strict_acc"] == 0.6
        and orpo["ifeval"]["prompt_level_loose_acc"] == 0.65
    )
    assert sft["ifeval"]["prompt_level_strict_acc"] == 0.45
    assert (
        orpo["alpaca_eval"]["length_controlled_winrate"] == 15.67
        and orpo["mt_bench"]["overall"] == 6.5
    )
    assert summary["methods"]["dpo"]["compute"]["reference_flops"] == 4.0e12
    assert summary["methods"]["dpo"]["missing"] == {
        "sweep": "not run",
        "eval": "failed: see manifest",
    }
    effect = summary["effect"]
    assert effect["rejected_logp_change"]["orpo"] == pytest.approx(-0.6)
    assert effect["rejected_logp_change"]["sft"] == pytest.approx(0.35)
    assert effect["rejected_logp_change"]["dpo"] == pytest.approx(-0.4)
    assert [c["verdict"] for c in effect["checks"]] == [True, True]
    assert effect["verdict"] is True
    assert write_summary(run) == summary  # the library call writes the same figures


def test_single_run_markdown_tables(tmp_path):
    run = make_good_run(tmp_path)
    md = build_report([run], run)["markdown"].read_text()

    effect = md_section(md, "The ORPO effect")
    assert "The ORPO effect holds in this run." in effect
    assert md_row(effect, "orpo") == [
        "orpo",
        "0 → 100",
        "mean/token",
        "-1.1000",
        "-0.8500",
        "-1.3000",
        "-1.9000",
        "-0.6000",
        "60.00",
        "65.00",
    ]
    assert md_row(effect, "sft")[5:8] == ["-1.3000", "-0.9500", "+0.3500"]
    assert md_row(effect, "dpo")[2] == "sum/response"

    env = md_section(md, "Config and environment")
    assert md_row(env, "torch") == ["torch", "2.13.0"]
    assert md_row(env, "gpus") == ["gpus", "2 × NVIDIA H100"]
    assert (
        md_row(env, "train/orpo")[1] == "done"
        and md_row(env, "train/orpo")[4] == "120.5 s (2.0 min)"
    )
    assert md_row(env, "eval/dpo")[1] == "failed"
    assert "lam: 0.1" in env  # the config, collapsed

    data = md_section(md, "Data")
    assert md_row(data, "records read") == ["records read", "1,000"]
    assert md_row(data, "rejected") == ["rejected", "50"]
    assert md_row(data, "empty_response") == ["empty_response", "30"]
    assert md_row(data, "identical_pair") == ["identical_pair", "20"]

    sweep = md_section(md, "Sweep")
    best = md_row(sweep, "t1")
    assert best == ["★ t1", "0.1", "0.8500", "TERMINATED"]
    assert md_row(sweep, "t0")[1:3] == ["0.05", "0.9100"]
    assert "**★ t1**" in sweep  # highlighted
    assert "optim.lr=8e-06" in sweep and "not available for sft: not run; dpo: not run" in sweep

    ifeval = md_section(md, "IFEval (constraint following)")
    assert md_row(ifeval, "orpo") == ["orpo", "60.00", "65.00", "70.00", "75.00", "20", "0"]
    assert md_row(ifeval, "dpo")[1] == "failed: see manifest"
    beta = md_row(
        ifeval, "Mistral-ORPO-β (7B) (Hong et al. 2024, Table 6) — published, not run here"
    )
    assert beta[1:5] == ["52.87", "55.64", "63.55", "66.19"]
    assert md_row(ifeval, "keywords")[1] == "80.00 / 90.00"

    alpaca = md_section(md, "AlpacaEval 2.0")
    assert md_row(alpaca, "orpo")[1:8] == [
        "12.34",
        "1.23",
        "15.67",
        "0.89",
        "20",
        "fixture-judge",
        "no",
    ]
    assert md_row(alpaca, "sft")[1] == "not run"
    assert "20 of the 805 instructions" in alpaca
    simpo = next(line for line in alpaca.splitlines() if "Llama-3-8B-Instruct SimPO" in line)
    assert "44.70" in simpo and "40.50" in simpo and "published, not run here" in simpo

    mt = md_section(md, "MT-Bench")
    assert md_row(mt, "orpo")[1:4] == ["6.75", "6.25", "6.50"]
    assert md_row(mt, "humanities") == ["humanities", "8.50"]
    assert md_row(
        mt, "Mistral-ORPO-β (7B) (Hong et al. 2024 (EMNLP), Table 2) — published, not run here"
    )[1:4] == ["—", "—", "7.32"]

    compute = md_section(md, "Compute cost")
    assert md_row(compute, "dpo")[7:10] == ["1.400e+13", "4.000e+12", "28.6%"]
    assert md_row(compute, "orpo")[8:10] == ["0.000e+00", "0.0%"]
    assert "DPO spends 28.6% of its FLOPs on the reference forward; ORPO needs none" in compute

    training = md_section(md, "Training curves")
    assert "orpo: held-out eval rows" in training
    for name in (
        "training_curves.png",
        "logps_chosen_rejected.png",
        "mt_bench_radar.png",
        "compute_flops.png",
        "sweep_orpo_loss_lam.png",
    ):
        assert f"](plots/{name})" in md
        assert (run / "plots" / name).read_bytes().startswith(PNG_MAGIC)


def test_effect_false_is_said_plainly(tmp_path):
    run = make_bad_run(tmp_path)
    build_report([run], run)
    summary = json.loads((run / "summary.json").read_text())
    effect = summary["effect"]
    assert effect["rejected_logp_change"]["orpo"] == pytest.approx(0.1)
    assert effect["rejected_logp_change"]["sft"] == pytest.approx(-0.2)
    assert [c["verdict"] for c in effect["checks"]] == [False, False]
    assert effect["verdict"] is False
    md = (run / "report.md").read_text()
    assert "> ❌ **The ORPO effect does NOT hold in this run.**" in md
    assert "holds in this run" not in md
    assert 'class="verdict bad"' in (run / "report.html").read_text()
    # Missing stages are reported in place, not crashed on.
    assert "data statistics: bad: failed: see manifest" in md.lower()
    assert "Sweep not run for any method" in md
    assert (
        "DPO would spend 2/8 = 25.0% of its FLOPs on the reference forward; ORPO needs none." in md
    )
    assert "2·N·T = 4.000e+12 FLOPs" in md  # N = 1e6, T = 2e6 from the ORPO run_info
    assert md_row(md_section(md, "Compute cost"), "sft")[1] == "no run_info.json"


def test_effect_needs_sft_rejected_to_rise(tmp_path):
    """Both methods lower the rejected log-prob (ORPO -0.5, SFT -0.1): the paper's contrast is
    absent even though ORPO lowers it more; IFEval ties at 0.5 and ties count as "≥"."""
    run = tmp_path / "both_fall"
    _write(run / "manifest.json", {"name": "both_fall", "methods": ["orpo", "sft"]})
    _metrics(run / "train/orpo/metrics.jsonl", [-1.1, -1.0, -0.9], [-1.3, -1.5, -1.8], "orpo")
    _metrics(run / "train/sft/metrics.jsonl", [-1.1, -1.0, -0.9], [-1.3, -1.35, -1.4], "sft")
    _write(run / "eval/orpo/summary.json", {"ifeval": _ifeval(0.5, 0.55)})
    _write(run / "eval/sft/summary.json", {"ifeval": _ifeval(0.5, 0.6)})
    effect = write_summary(run)["effect"]
    assert effect["rejected_logp_change"] == {
        "orpo": pytest.approx(-0.5),
        "sft": pytest.approx(-0.1),
    }
    assert [c["verdict"] for c in effect["checks"]] == [False, True]
    assert effect["verdict"] is False
    assert json.loads((run / "summary.json").read_text())["effect"]["verdict"] is False


def test_reads_the_real_producers_key_names(tmp_path):
    """eval/<method>/summary.json as pipelines.evaluate writes it, from the benchmarks' own
    aggregate functions. IFEval: prompts (T, T), (F, T) -> prompt strict 1/2, loose 2/2; the
    three instructions strict 2/3. MT-Bench: turns 8 and 6 -> 7.00. AlpacaEval: preferences
    1.0, 1.5, 2.0 repeated -> win rate mean(p - 1) x 100 = 50.00."""
    from evaluation.alpaca_eval.metrics import aggregate as alpaca_aggregate
    from evaluation.ifeval import aggregate as ifeval_aggregate
    from evaluation.mt_bench import aggregate as mt_bench_aggregate

    ifeval = ifeval_aggregate(
        [
            {
                "prompt_level_strict": True,
                "prompt_level_loose": True,
                "instruction_id_list": ["keywords:existence"],
                "inst_level_strict": [True],
                "inst_level_loose": [True],
            },
            {
                "prompt_level_strict": False,
                "prompt_level_loose": True,
                "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
                "inst_level_strict": [False, True],
                "inst_level_loose": [True, True],
            },
        ]
    )
    mt_bench = mt_bench_aggregate(
        [
            {"question_id": 81, "category": "writing", "turn": t, "score": s, "parse_status": "ok"}
            for t, s in ((1, 8.0), (2, 6.0))
        ],
        judge_model="fixture-judge",
    )
    annotations = [
        {
            "index": i,
            "preference": 1.0 + (i % 3) / 2,
            "parse_status": "ok",
            "preference_source": "logprobs",
            "generator_1": "gpt4_turbo",
            "generator_2": "orpo",
            "output_1": "x" * (50 + i),
            "output_2": "y" * (40 + 3 * i),
        }
        for i in range(12)
    ]
    alpaca = alpaca_aggregate(annotations, judge_model="fixture-judge")
    run = tmp_path / "real"
    _write(run / "manifest.json", {"name": "real", "methods": ["orpo"]})
    _write(
        run / "eval/orpo/summary.json",
        json.loads(
            json.dumps(
                {"model": "orpo", "ifeval": ifeval, "mt_bench": mt_bench, "alpaca_eval": alpaca},
                default=str,
            )
        ),
    )
    md = build_report([run], run)["markdown"].read_text()
    assert md_row(md_section(md, "IFEval (constraint following)"), "orpo") == [
        "orpo", "50.00", "100.00", "66.67", "100.00", "2", "0"
    ]  # fmt: skip
    assert md_row(md_section(md, "MT-Bench"), "orpo")[1:5] == ["8.00", "6.00", "7.00", "2"]
    assert md_row(md_section(md, "AlpacaEval 2.0"), "orpo")[1] == "50.00"
    assert "12 of the 805 instructions" in md_section(md, "AlpacaEval 2.0")
    summary = json.loads((run / "summary.json").read_text())["methods"]["orpo"]
    assert summary["ifeval"]["prompt_level_strict_acc"] == 0.5
    assert summary["mt_bench"]["overall"] == 7.0 and summary["alpaca_eval"]["win_rate"] == 50.0


def test_html_is_self_contained(tmp_path):
    run = make_good_run(tmp_path)
    html = build_report([run], run)["html"].read_text()
    parser = _Resources()
    parser.feed(html)
    assert len(parser.images) >= 5
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)
    external = [r for r in parser.references if not (r[1] == "href" and r[2].startswith("#"))]
    assert external == []
    assert "url(" not in html and "@import" not in html
    assert html.count('class="ref"') == len(REFERENCES)
    assert "<details>" in html  # the config is collapsed


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed: no browser render"
)
def test_html_renders_in_chromium(tmp_path):
    run = make_good_run(tmp_path)
    html = build_report([run], run)["html"]
    screenshot = tmp_path / "screenshot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={screenshot}",
                "--window-size=1400,3000",
                html.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=300,  # a budget for a loaded machine
        )
    assert screenshot.read_bytes().startswith(PNG_MAGIC)


def test_comparison_of_two_runs(tmp_path, capsys):
    good, bad = make_good_run(tmp_path), make_bad_run(tmp_path)
    paths = report_cli.main([str(good), str(bad)])
    out = good / "compare"
    assert paths["html"] == out / "report.html" and paths["markdown"].is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {out / 'report.html'}"
    md = paths["markdown"].read_text()
    ifeval = md_section(md, "IFEval (constraint following)")
    assert md_row(ifeval, "good/orpo")[1] == "60.00" and md_row(ifeval, "bad/orpo")[1] == "40.00"
    assert md_row(ifeval, "bad/sft")[1] == "50.00"
    effect = md_section(md, "The ORPO effect")
    assert "The ORPO effect holds in this run." in md_section(effect, "Run good")
    assert "does NOT hold" in md_section(effect, "Run bad")
    combined = json.loads(paths["summary"].read_text())
    assert combined["runs"]["good"]["effect"]["verdict"] is True
    assert combined["runs"]["bad"]["effect"]["verdict"] is False
    for run in (good, bad):  # each run still gets its own summary.json
        assert json.loads((run / "summary.json").read_text())["run"] == run.name
    data = md_section(md, "Data")
    assert md_row(data, "records read") == ["records read", "1,000", "failed: see manifest"]


def test_gaps_and_unreadable_files_do_not_crash(tmp_path):
    run = tmp_path / "broken"
    _write(
        run / "manifest.json",
        {
            "name": "broken",
            "methods": ["orpo", "sft"],
            "stages": {"train": {"status": "failed"}, "eval": {"status": "pending"}},
        },
    )
    (run / "train/orpo").mkdir(parents=True)
    (run / "train/orpo/metrics.jsonl").write_text(
        '{"step": 1, "loss": 1.0}\n{"step": 2, "lo'
    )  # torn line
    (run / "sweep/orpo").mkdir(parents=True)
    (run / "sweep/orpo/results.json").write_text("{not json")
    paths = build_report([run], tmp_path / "out")
    md = paths["markdown"].read_text()
    summary = json.loads(paths["summary"].read_text())
    assert summary["effect"]["verdict"] is None
    assert "cannot be judged" in md
    assert (
        md_row(md_section(md, "IFEval (constraint following)"), "orpo")[1]
        == "not run yet (pending)"
    )
    assert md_row(md_section(md, "Training curves"), "sft")[1] == "failed: see manifest"
    gaps = md_section(md, "Gaps and problems")
    assert "results.json: unreadable" in gaps and "1 line(s) were not JSON objects" in gaps
    assert "sweep output unreadable (see Gaps and problems)" in gaps
    assert (tmp_path / "out" / "report.html").is_file()


def test_published_numbers_carry_a_table_citation():
    for reference in REFERENCES:
        assert "Table" in reference.source and "published, not run here" in reference.label
        assert reference.values


# ---- the pretrained base, reward win rate, diversity, the sweep's margin (issue 11) -------------


def _add_base_winrate_diversity(run: Path) -> None:
    """A base (perplexity 12.5 -> 2.25 over 200 steps), ORPO's win rate 0.625 ± 0.1 against SFT
    (5 wins, 0 ties, 3 losses of 8), PID/AID per method, and each trial's held-out margin."""
    _write(
        run / "base/base_info.json",
        {
            "heldout_perplexity": 2.25,
            "heldout_nll": 0.8109,
            "step": 200,
            "initial_heldout_perplexity": 12.5,
            "initial_step": 0,
            "corpus": "synthetic-lm(test)",
            "train_conversations": 3000,
            "heldout_conversations": 200,
            "export_dir": str(run / "base/train/export"),
        },
    )
    _write(
        run / "winrate.json",
        {
            "baseline": "sft",
            "reward": "verifiable: test",
            "methods": {
                "orpo": {"win_rate": 0.625, "stderr": 0.1, "n": 8, "wins": 5, "ties": 0, "losses": 3}
            },
        },
    )
    for method, pid, aid in (("orpo", 0.71, 0.42), ("sft", 0.83, 0.55)):
        summary = json.loads((run / f"eval/{method}/summary.json").read_text())
        summary["reward"] = {"reward": "verifiable: test", "benchmark": "ifeval", "n": 8, "mean_reward": 0.5}
        summary["diversity"] = {"pid": pid, "aid": aid, "n_prompts": 16, "n_pairs": 2016, "num_samples": 4,
                                "temperature": 1.0, "embedding_model": "all-MiniLM-L6-v2 (bundled)"}
        _write(run / f"eval/{method}/summary.json", summary)
    results = json.loads((run / "sweep/orpo/results.json").read_text())
    for trial, margin in zip(results, (0.05, 0.25, 0.75)):
        trial["metrics"]["eval/logps/margin"] = margin
    _write(run / "sweep/orpo/results.json", results)


def test_base_winrate_and_diversity_reach_summary_and_report(tmp_path):
    run = make_good_run(tmp_path)
    _add_base_winrate_diversity(run)
    paths = build_report([run], run)
    summary = json.loads(paths["summary"].read_text())
    assert summary["base"]["heldout_perplexity"] == 2.25 and summary["base"]["step"] == 200
    assert summary["start"]["agree"] is True and summary["start"]["from"] == "the pretrained base"
    orpo, sft = summary["methods"]["orpo"], summary["methods"]["sft"]
    assert orpo["reward_winrate"]["win_rate"] == 0.625 and orpo["reward_winrate"]["baseline"] == "sft"
    assert sft["reward_winrate"] is None
    assert (orpo["diversity"]["pid"], orpo["diversity"]["aid"]) == (0.71, 0.42)
    assert orpo["logps"]["chosen_initial"] == -1.1 and orpo["logps"]["rejected_final"] == -1.9

    markdown = paths["markdown"].read_text()
    base = md_section(markdown, "Pretrained base")
    assert md_row(base, "good")[1:3] == ["12.50 → 2.250", "0 → 200"]
    measures = md_section(markdown, "Reward win rate and diversity")
    assert md_row(measures, "orpo")[1:6] == ["62.50 ± 10.00 vs sft", "5/0/3 (n=8)", "0.5000", "0.7100", "0.4200"]
    assert md_row(measures, "sft")[1] == "baseline"
    assert "Reward used: verifiable: test" in measures
    assert "step 0 of every method is the base model" in md_section(markdown, "The ORPO effect")
    html = paths["html"].read_text()
    assert "62.50 ± 10.00" in html and "0.7100" in html

    sweep = md_section(markdown, "Sweep")
    assert md_row(sweep, "t2")[3] == "0.7500"  # trial, λ, objective, margin
    assert (run / "plots" / "sweep_orpo_loss_lam_margin.png").read_bytes()[:8] == PNG_MAGIC


def test_methods_not_sharing_a_start_are_flagged(tmp_path):
    run = make_good_run(tmp_path)
    _add_base_winrate_diversity(run)
    _metrics(run / "train/sft/metrics.jsonl", [-2.1, -0.9, -0.8], [-1.3, -1.1, -0.95], "sft")  # other start
    paths = build_report([run], run)
    summary = json.loads(paths["summary"].read_text())
    assert summary["start"]["agree"] is False and summary["start"]["max_difference"] == pytest.approx(1.0)
    assert "DISAGREE" in md_section(paths["markdown"].read_text(), "The ORPO effect")


def test_without_a_base_the_report_says_so(tmp_path):
    paths = build_report([make_good_run(tmp_path)], tmp_path / "good")
    summary = json.loads(paths["summary"].read_text())
    assert summary["base"] is None and summary["start"]["from"].startswith("the same random-init")
    markdown = paths["markdown"].read_text()
    assert "No base stage" in markdown and "## Pretrained base" not in markdown
    assert "Not measured in this run" in md_section(markdown, "Reward win rate and diversity")
