"""Assemble the benchmark report from one or more run directories and write it out.

``build_report([run_dir], out_dir)`` writes ``report.md``, ``report.html`` (self-contained),
``plots/*.png`` and each run's ``summary.json``; with several runs the methods appear side by
side as ``<run>/<method>`` and a combined ``summary.json`` goes to ``out_dir``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from evaluation.report import plots, tables
from evaluation.report.load import MethodData, RunData, finite, load_run
from evaluation.report.published import REFERENCES
from evaluation.report.render import (
    Block,
    Bullets,
    Details,
    Heading,
    Image,
    Para,
    Table,
    to_html,
    to_markdown,
)
from evaluation.report.summary import run_summary, series, write_json
from evaluation.report.sweep import section as sweep_section
from evaluation.report.sweep import slug

CURVE_PANELS = (
    ("loss", "loss"),
    ("nll", "NLL of the chosen response"),
    ("log_odds_ratio", "log σ(log-odds ratio)"),
    ("log_odds", "log-odds ratio"),
    ("rewards/margins", "reward margin (chosen − rejected)"),
    ("rewards/accuracies", "reward accuracy"),
)


def _heading(text: str, anchor: str | None = None) -> Heading:
    return Heading(text, 2, anchor or slug(text.lower()))


def _effect(
    runs: list[RunData], summaries: dict[str, dict[str, Any]], compare: bool
) -> list[Block]:
    blocks: list[Block] = [
        _heading("The ORPO effect", "effect"),
        Para(
            f"The ORPO paper's claim, checked on {'each' if compare else 'this'} run: under ORPO "
            "the held-out log-probability of rejected responses falls while under SFT it rises "
            "(the paper's Figure 3 vs Figure 7), and ORPO follows constraints at least as well "
            "as SFT (IFEval prompt-level strict accuracy)."
        ),
    ]
    for run in runs:
        result = summaries[run.name]["effect"]
        if compare:
            blocks.append(Heading(f"Run {run.name}", 3))
        verdict = result["verdict"]
        if verdict is True:
            blocks.append(
                Para(f"**The ORPO effect holds in this run.** {result['verdict_text']}", "good")
            )
        elif verdict is False:
            blocks.append(
                Para(
                    f"**The ORPO effect does NOT hold in this run.** {result['verdict_text']}",
                    "bad",
                )
            )
        else:
            blocks.append(
                Para(f"**The ORPO effect cannot be judged.** {result['verdict_text']}", "unknown")
            )
        icon = {True: "✔", False: "✘", None: "?"}
        blocks.append(
            Bullets([f"{icon[c['verdict']]} {c['check']}: {c['detail']}" for c in result["checks"]])
        )
        blocks.append(_start_note(summaries[run.name]))
        headers = [
            "method",
            "eval steps",
            "unit",
            "chosen initial",
            "chosen final",
            "rejected initial",
            "rejected final",
            "Δ rejected",
            "IFEval prompt strict (%)",
            "IFEval prompt loose (%)",
        ]
        rows = []
        for name, method in run.methods.items():
            headline = summaries[run.name]["methods"][name]
            logps, ifeval = headline["logps"] or {}, headline["ifeval"] or {}
            span = (
                f"{tables.step(logps['initial_step'])} → {tables.step(logps['final_step'])}"
                if logps
                else "no eval rows"
            )
            unit = {
                "mean log-prob per response token": "mean/token",
                "summed log-prob per response": "sum/response",
            }.get(logps.get("unit"), tables.DASH)
            rows.append(
                [
                    method.label,
                    span,
                    unit,
                    tables.num(logps.get("chosen_initial")),
                    tables.num(logps.get("chosen_final")),
                    tables.num(logps.get("rejected_initial")),
                    tables.num(logps.get("rejected_final")),
                    tables.signed(logps.get("rejected_change")),
                    tables.percent_of_fraction(ifeval.get("prompt_level_strict_acc")),
                    tables.percent_of_fraction(ifeval.get("prompt_level_loose_acc")),
                ]
            )
        blocks.append(
            Table(
                headers,
                rows,
                caption="Log-probs of held-out pairs (first and last eval rows "
                "of metrics.jsonl; mean per response token, DPO: summed per response); IFEval "
                "on generated answers.",
            )
        )
    return blocks


def _start_note(summary: dict[str, Any]) -> Para:
    """Where the trajectories start: the shared base (step 0 of every method) and whether it agrees."""
    start, base = summary["start"], summary.get("base")
    where = (
        f"Every method starts from the shared pretrained base (`{base.get('export_dir')}`, held-out "
        f"perplexity {tables.num(base.get('heldout_perplexity'), 3)} after "
        f"{tables.step(base.get('step'))} steps): step 0 of every method is the base model."
        if base
        else "No base stage: every method starts from the random-init model, which is still "
        "learning the language, so every log-prob tends to rise whatever the objective."
    )
    agree = {
        True: "The methods' step-0 log-probs agree, as they must.",
        False: "The methods' step-0 log-probs DISAGREE: they did not start from the same model.",
        None: "",
    }[start["agree"]]
    return Para(f"{where} {agree} ({start['detail']}.)", "note" if start["agree"] is not False else "bad")


def _base(runs: list[RunData], summaries: dict[str, dict[str, Any]]) -> list[Block]:
    with_base = [r for r in runs if summaries[r.name].get("base")]
    if not with_base:
        return []
    rows = []
    for run in with_base:
        base = summaries[run.name]["base"]
        rows.append(
            [
                run.name,
                (
                    f"{tables.num(base.get('initial_heldout_perplexity'), 2)} → "
                    f"{tables.num(base.get('heldout_perplexity'), 3)}"
                ),
                f"{tables.step(base.get('initial_step'))} → {tables.step(base.get('step'))}",
                tables.count(base.get("train_conversations")),
                tables.count(base.get("heldout_conversations")),
                str(base.get("corpus", tables.DASH)),
            ]
        )
    return [
        _heading("Pretrained base", "base"),
        Para(
            "The `base` stage pretrains the model as a plain causal LM on unpaired conversations "
            "of the synthetic language (prompts with responses that follow and that violate their "
            "constraint, in equal number) before any method trains; every method starts from it."
        ),
        Table(
            ["run", "held-out perplexity", "steps", "train conversations", "held-out conversations", "corpus"],
            rows,
            caption="Perplexity: exp(mean NLL per token) over prompt and response tokens of held-out "
            "conversations (base/base_info.json).",
        ),
    ]


def _paper_measures(runs: list[RunData], summaries: dict[str, dict[str, Any]]) -> list[Block]:
    blocks: list[Block] = [
        _heading("Reward win rate and diversity", "paper-measures"),
        Para(
            "The ORPO paper's other measurements: each method's reward win rate against the "
            "baseline method on the same prompts (its Tables 2-3; ties count one half), and the "
            "per-input / across-input diversity of sampled answers (PID / AID, its Table 5: mean "
            "cosine similarity of sentence embeddings, lower is more diverse)."
        ),
    ]
    rows, rewards = [], set()
    for run in runs:
        for name, method in run.methods.items():
            headline = summaries[run.name]["methods"][name]
            win, reward, div = headline["reward_winrate"], headline["reward"], headline["diversity"]
            if reward:
                rewards.add(str(reward.get("reward")))
            baseline = (run.winrate or {}).get("baseline")
            if win:
                win_text = (
                    f"{tables.percent_of_fraction(win.get('win_rate'))} ± "
                    f"{tables.percent_of_fraction(win.get('stderr'))} vs {win.get('baseline')}"
                )
                wtl = f"{win.get('wins')}/{win.get('ties')}/{win.get('losses')} (n={win.get('n')})"
            else:
                win_text = "baseline" if name == baseline else tables.DASH
                wtl = tables.DASH
            rows.append(
                [
                    method.label,
                    win_text,
                    wtl,
                    tables.num((reward or {}).get("mean_reward")),
                    tables.num((div or {}).get("pid")),
                    tables.num((div or {}).get("aid")),
                    (
                        f"{div.get('num_samples')} × {div.get('n_prompts')} prompts, T={div.get('temperature')}"
                        if div
                        else tables.DASH
                    ),
                ]
            )
    if not any(r[1] != tables.DASH or r[4] != tables.DASH for r in rows):
        return blocks + [
            Para("Not measured in this run (evaluation.reward and evaluation.diversity are off).", "note")
        ]
    reward_text = "; ".join(sorted(rewards)) or "none"
    blocks.append(
        Table(
            ["method", "reward win rate (%)", "wins/ties/losses", "mean reward", "PID ↓", "AID ↓", "samples"],
            rows,
            caption=f"Reward used: {reward_text}. PID/AID encoder: "
            + ", ".join(
                sorted(
                    {
                        str((summaries[r.name]["methods"][n]["diversity"] or {}).get("embedding_model"))
                        for r in runs
                        for n in r.methods
                        if summaries[r.name]["methods"][n]["diversity"]
                    }
                )
                or ["none"]
            )
            + ".",
        )
    )
    return blocks


def _environment(runs: list[RunData], compare: bool) -> list[Block]:
    blocks: list[Block] = [_heading("Config and environment", "environment")]
    for run in runs:
        if compare:
            blocks.append(Heading(f"Run {run.name}", 3))
        manifest = run.manifest
        if manifest is None:
            blocks.append(
                Para(
                    f"`{run.path}/manifest.json` is missing: versions, hardware, config and "
                    "stage statuses are unknown.",
                    "note",
                )
            )
            continue
        for key, title, header in (
            ("versions", "Versions", "component"),
            ("hardware", "Hardware", ""),
        ):
            table = tables.key_values(manifest.get(key), header or key, "value")
            if table is not None:
                table.caption = title
                blocks.append(table)
            else:
                blocks.append(Para(f"{title}: not recorded in the manifest.", "note"))
        stage_table = tables.stages(manifest)
        if stage_table is not None:
            stage_table.caption = "Stages (from manifest.json)"
            blocks.append(stage_table)
        else:
            blocks.append(Para("Stages: not recorded in the manifest.", "note"))
        inputs = tables.key_values(manifest.get("inputs"), "input", "sha256 / revision")
        if inputs is not None:
            inputs.caption = "Inputs"
            blocks.append(inputs)
        if manifest.get("methods"):
            blocks.append(Para("Methods: " + ", ".join(f"`{m}`" for m in manifest["methods"])))
        if manifest.get("config") is not None:
            text = yaml.safe_dump(
                manifest["config"], sort_keys=False, default_flow_style=None, width=100
            )
            blocks.append(Details(f"Run config of {run.name} (click to expand)", text, "yaml"))
    return blocks


def _data(runs: list[RunData]) -> list[Block]:
    blocks: list[Block] = [_heading("Data", "data")]
    if all(r.data_stats is None for r in runs):
        return blocks + [
            Para(
                "Data statistics: "
                + "; ".join(f"{r.name}: {r.data_missing or 'not run'}" for r in runs)
                + ".",
                "note",
            )
        ]
    blocks.append(tables.data_counts(runs))
    reasons = tables.reject_reasons(runs)
    blocks.append(
        reasons if reasons is not None else Para("No rejections recorded by reason.", "note")
    )
    return blocks


def _training(methods: list[MethodData], has_base: bool = False) -> list[Block]:
    blocks: list[Block] = [_heading("Training curves", "training"), tables.final_training(methods)]
    curves = {
        m.label: {
            metric: {
                "train": series(m.metrics, metric),
                "eval": series(m.metrics, f"eval/{metric}"),
            }
            for metric, _ in CURVE_PANELS
        }
        for m in methods
        if m.metrics
    }
    png = plots.training_curves(curves, CURVE_PANELS)
    if png:
        blocks.append(
            Image(
                "training_curves.png",
                png,
                "training curves",
                "Loss, NLL, log-odds ratio and reward margin/accuracy for every method.",
            )
        )
    logps, sources = {}, []
    for m in methods:
        if not m.metrics:
            continue
        source = "eval" if series(m.metrics, "eval/logps/chosen")[0] else "train"
        prefix = "eval/" if source == "eval" else ""
        logps[m.label] = {
            "chosen": series(m.metrics, f"{prefix}logps/chosen"),
            "rejected": series(m.metrics, f"{prefix}logps/rejected"),
            "source": source,
            "summed": m.loss_type == "dpo",
        }
        if logps[m.label]["chosen"][0]:
            where = (
                "held-out eval rows (eval/logps/*)"
                if source == "eval"
                else "training batches (logps/*): no eval rows"
            )
            sources.append(f"{m.label}: {where}")
    png = plots.logp_panels(logps, "step 0: base" if has_base else None)
    if png:
        blocks.append(
            Image(
                "logps_chosen_rejected.png",
                png,
                "chosen vs rejected log-probs per method",
                "One panel per method: the ORPO paper's Figure 3 (SFT) vs Figure 7 (ORPO) "
                "view"
                + (", every method starting at step 0 from the shared pretrained base" if has_base else "")
                + ". Mean per-token log-probs share one y-range; DPO logs summed "
                "log-probs, on its own axis.",
            )
        )
        blocks.append(Para("Log-probs plotted from " + "; ".join(sources) + ".", "note"))
    missing = [f"{m.label}: {m.missing['train']}" for m in methods if "train" in m.missing]
    if missing:
        blocks.append(Para("No training output for " + "; ".join(missing) + ".", "note"))
    return blocks


def _sweep(methods: list[MethodData]) -> list[Block]:
    blocks: list[Block] = [_heading("Sweep", "sweep")]
    swept = [m for m in methods if m.sweep_results is not None or m.sweep_best is not None]
    for m in swept:
        blocks += [Heading(f"{m.label}", 3), *sweep_section(m)]
    others = [f"{m.label}: {m.missing.get('sweep', 'not run')}" for m in methods if m not in swept]
    if others:
        blocks.append(
            Para(
                "Sweep "
                + ("not run for any method (" if not swept else "not available for ")
                + "; ".join(others)
                + (")." if not swept else "."),
                "note",
            )
        )
    return blocks


def _benchmarks(methods: list[MethodData]) -> list[Block]:
    blocks: list[Block] = [
        _heading("Benchmarks", "benchmarks"),
        Para(
            "Rows in grey italics are published numbers from the papers, for reference only: they were "
            "not run here, and use other base models, data and (for AlpacaEval/MT-Bench) GPT-4 judges.",
            "note",
        ),
    ]
    blocks += [Heading("IFEval (constraint following)", 3), tables.ifeval(methods)]
    categories = tables.ifeval_categories(methods)
    if categories is not None:
        categories.caption = "IFEval by instruction category (instruction-level accuracy)"
        blocks.append(categories)
    blocks += [Heading("AlpacaEval 2.0", 3), tables.alpaca_eval(methods)]
    notes = tables.comparability_notes(methods, "alpaca_eval")
    if notes:
        blocks += [
            Para("Why these AlpacaEval numbers are not leaderboard-comparable:"),
            Bullets(notes),
        ]
    blocks += [Heading("MT-Bench", 3), tables.mt_bench(methods)]
    notes = tables.comparability_notes(methods, "mt_bench")
    if notes:
        blocks += [
            Para("Why these MT-Bench numbers are not comparable to FastChat's:"),
            Bullets(notes),
        ]
    by_category = tables.mt_bench_categories(methods)
    if by_category is not None:
        by_category.caption = "MT-Bench by category"
        blocks.append(by_category)
        png = plots.mt_bench_radar(
            {
                m.label: ((m.eval_summary or {}).get("mt_bench") or {}).get("by_category") or {}
                for m in methods
            }
        )
        if png:
            blocks.append(
                Image(
                    "mt_bench_radar.png", png, "MT-Bench by category", "MT-Bench score by category."
                )
            )
    return blocks


def _compute(methods: list[MethodData]) -> list[Block]:
    blocks: list[Block] = [_heading("Compute cost", "compute"), tables.compute(methods)]
    dpo = [
        m
        for m in methods
        if m.loss_type == "dpo"
        and m.run_info
        and finite(m.run_info.get("flops_estimate"))
        and finite(m.run_info.get("reference_flops")) is not None
    ]
    orpo = [m for m in methods if m.loss_type == "orpo" and m.run_info]
    orpo_refs = [finite(m.run_info.get("reference_flops")) for m in orpo]
    orpo_note = (
        "ORPO needs none"
        if all(r in (0.0, None) for r in orpo_refs)
        else "ORPO's run_info reports reference FLOPs: "
        + ", ".join(f"{m.label} {tables.flops(r)}" for m, r in zip(orpo, orpo_refs))
    )
    for m in dpo:
        share = m.run_info["reference_flops"] / m.run_info["flops_estimate"] * 100
        blocks.append(
            Para(
                f"**DPO spends {share:.1f}% of its FLOPs on the reference forward; {orpo_note}** "
                f"({m.label}: {tables.flops(m.run_info['reference_flops'])} of "
                f"{tables.flops(m.run_info['flops_estimate'])} estimated FLOPs, from run_info.json)."
            )
        )
    if not dpo:
        text = (
            "No DPO run here, so the saving is an estimate from the formula, not a measurement: with "
            "6·N·T FLOPs for the policy's forward and backward and 2·N·T for DPO's reference forward, "
            "**DPO would spend 2/8 = 25.0% of its FLOPs on the reference forward; ORPO needs none.**"
        )
        for m in orpo:
            n, tokens = (
                finite(m.run_info.get("n_params")),
                finite(m.run_info.get("tokens_processed")),
            )
            if n and tokens:
                text += (
                    f" For {m.label} (N = {tables.count(n)}, T = {tables.count(tokens)} tokens) that "
                    f"reference forward would cost 2·N·T = {tables.flops(2 * n * tokens)} FLOPs."
                )
        blocks.append(Para(text))
    with_info = [m for m in methods if m.run_info and finite(m.run_info.get("flops_estimate"))]
    if with_info:
        reference = [finite(m.run_info.get("reference_flops")) or 0.0 for m in with_info]
        policy = [m.run_info["flops_estimate"] - r for m, r in zip(with_info, reference)]
        png = plots.compute_bars([m.label for m in with_info], policy, reference)
        if png:
            blocks.append(
                Image(
                    "compute_flops.png",
                    png,
                    "estimated FLOPs per method",
                    "Estimated training FLOPs, split into the policy and the reference model.",
                )
            )
    return blocks


def _sources() -> list[Block]:
    return [
        _heading("Published reference numbers", "sources"),
        Bullets(
            [
                f"{r.model}, {r.benchmark}: "
                + ", ".join(f"{k} = {v:g}" for k, v in r.values.items())
                + f" — {r.source}: {r.paper}"
                + (f" ({'; '.join(r.notes)})" if r.notes else "")
                for r in REFERENCES
            ]
        ),
        Para(
            "Only numbers attributable to a specific table of the paper are included; see "
            "`evaluation/report/published.py` for what was left out and why.",
            "note",
        ),
    ]


def _gaps(runs: list[RunData], methods: list[MethodData]) -> list[Block]:
    items = [f"{m.label}: {stage} {reason}" for m in methods for stage, reason in m.missing.items()]
    items += [f"{r.name}: data {r.data_missing}" for r in runs if r.data_missing]
    items += [p for r in runs for p in r.problems]
    if not items:
        return []
    return [_heading("Gaps and problems", "gaps"), Bullets(items)]


def document(runs: list[RunData], summaries: dict[str, dict[str, Any]]) -> tuple[str, list[Block]]:
    compare = len(runs) > 1
    methods = [m for run in runs for m in run.methods.values()]
    title = (
        ("Benchmark comparison: " + ", ".join(r.name for r in runs))
        if compare
        else f"Benchmark report: {runs[0].name}"
    )
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        Para(
            f"Generated {now} by `pipelines.report` from "
            + ", ".join(f"`{r.path}`" for r in runs)
            + ". Every number comes from the runs' stage outputs; published numbers are labelled as such.",
            "note",
        )
    ]
    if not methods:
        blocks.append(
            Para(
                "No methods found: the run has no train/, sweep/ or eval/ outputs and the "
                "manifest lists no methods.",
                "unknown",
            )
        )
    blocks += _effect(runs, summaries, compare)
    blocks += _environment(runs, compare)
    blocks += _data(runs)
    blocks += _base(runs, summaries)
    blocks += _training(methods, any(r.base for r in runs))
    blocks += _sweep(methods)
    blocks += _benchmarks(methods)
    blocks += _paper_measures(runs, summaries)
    blocks += _compute(methods)
    blocks += _sources()
    blocks += _gaps(runs, methods)
    return title, blocks


def _load_all(run_dirs: list[Path]) -> list[RunData]:
    runs = [load_run(p) for p in run_dirs]
    if len(runs) > 1:
        seen: dict[str, int] = {}
        for run in runs:
            seen[run.name] = seen.get(run.name, 0) + 1
            if seen[run.name] > 1:  # two runs of the same name: keep their labels apart
                run.name = f"{run.name}-{seen[run.name]}"
            for m in run.methods.values():
                m.label = f"{run.name}/{m.method}"
    return runs


def build_report(run_dirs: list[Path], out_dir: Path) -> dict[str, Path]:
    """Write report.md, report.html and plots/ to ``out_dir`` and summary.json into each run dir.

    Returns {"markdown": path, "html": path, "summary": path}; the summary is the run's own
    ``summary.json`` for one run, a combined ``<out_dir>/summary.json`` for several.
    """
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise ValueError("build_report needs at least one run directory")
    out_dir = Path(out_dir)
    runs = _load_all(run_dirs)
    summaries = {}
    for run in runs:
        summaries[run.name] = run_summary(run)
        write_json(run.path / "summary.json", summaries[run.name])
    title, blocks = document(runs, summaries)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for block in blocks:
        if isinstance(block, Image):
            (out_dir / "plots" / block.name).write_bytes(block.png)
    markdown, html_path = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(to_markdown(title, blocks))
    html_path.write_text(to_html(title, blocks))
    if len(runs) == 1:
        summary_path = runs[0].path / "summary.json"
    else:
        summary_path = out_dir / "summary.json"
        write_json(summary_path, {"runs": summaries})
    return {"markdown": markdown, "html": html_path, "summary": summary_path}
