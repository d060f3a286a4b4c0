"""Hyperparameter sweeps: ``python -m pipelines.sweep --config configs/sweep_tiny.yaml key=value``.

Ray Tune in the current Ray Train idiom: each trial is a small Tune function (given a sliver of
CPU) that builds and fits a ``TorchTrainer`` (``pipelines.train.run``) and forwards its reports
to Tune. The data is tokenized once and shared by all trials. ASHA stops weak trials on the eval
metric; the objective is an eval metric or a benchmark score measured after training (the
trial's model answers held-out prompts and is scored by the IFEval checkers). An interrupted
sweep resumes with ``Tuner.restore`` without redoing finished trials.

Outputs (``output_dir``): ``results.csv`` / ``results.json`` (one row per trial),
``best.json`` and ``best/export`` (the best trial's model).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ray
from ray import tune

from orpo.config import apply_overrides, from_dict, load_config, to_dict
from orpo.modeling import load_tokenizer, resolve_model_path
from pipelines import data as data_pipeline
from pipelines.train import init_ray, run
from pipelines.train_config import DistributedTrainConfig

# Objectives and whether higher is better. "ifeval" is the prompt-level strict accuracy of the
# trial's model on the held-out benchmark prompts.
OBJECTIVE_MODES = {"eval/loss": "min", "eval/nll": "min", "eval/rewards/accuracies": "max",
                   "eval/rewards/margins": "max", "ifeval": "max"}


@dataclass
class SweepSettings:
    """What to search and how."""

    space: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"loss.lam": {"grid": [0.05, 0.1, 0.2, 0.25, 0.5, 1.0]}})
    """Dotted config key -> one of ``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [lo, hi]}``,
    ``{loguniform: [lo, hi]}``. The default is ORPO's λ grid; add ``optim.lr``, ``loss.beta``,
    ``loss.gamma_beta_ratio`` (SimPO) as needed."""
    search: Literal["grid", "random", "optuna"] = "grid"
    """``grid`` enumerates grid axes; ``random`` samples; ``optuna`` uses TPE (needs ``optuna``)."""
    num_samples: int = 1
    """Trials for random/optuna search; repeats of the whole grid for grid search."""
    objective: str = "eval/loss"
    """``eval/loss``, ``eval/nll``, ``eval/rewards/accuracies``, ``eval/rewards/margins`` or ``ifeval``."""
    asha: bool = True
    """Stop weak trials early with ASHA on the objective's eval metric (eval/loss for ``ifeval``)."""
    asha_grace_steps: int = 10
    """Steps every trial runs before ASHA may stop it."""
    asha_reduction_factor: int = 3
    """ASHA keeps 1/reduction_factor of the trials at each rung."""
    max_concurrent_trials: int | None = None
    """Trials at once; unset derives it from the cluster's CPUs/GPUs and the trial's workers."""
    benchmark_prompts: str | None = None
    """IFEval-format JSONL for ``objective: ifeval``; unset uses the held-out pairs' prompts when
    they carry instructions (the synthetic set does), else the shared IFEval prompts."""
    benchmark_limit: int = 32
    """Prompts scored per trial for a benchmark objective."""
    benchmark_max_new_tokens: int = 96
    """Generation budget per prompt for a benchmark objective."""


@dataclass
class SweepConfig(DistributedTrainConfig):
    """A base training config plus the sweep over it."""

    sweep: SweepSettings = field(default_factory=SweepSettings)
    """The search."""


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Our YAML space -> Tune's; keys keep their dots (``loss.lam``)."""
    samplers = {"grid": tune.grid_search, "choice": tune.choice,
                "uniform": lambda bounds: tune.uniform(*bounds), "loguniform": lambda bounds: tune.loguniform(*bounds)}
    out = {}
    for key, spec in space.items():
        if len(spec) != 1 or next(iter(spec)) not in samplers:
            raise ValueError(f"sweep.space.{key}: expected one of {sorted(samplers)}, got {spec}")
        kind, values = next(iter(spec.items()))
        out[key] = samplers[kind](values)
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any], output_dir: str) -> DistributedTrainConfig:
    data = copy.deepcopy(base)
    data.pop("sweep", None)
    apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in params.items()] + [f"output_dir={output_dir}"])
    return from_dict(DistributedTrainConfig, data)


def max_concurrent(cfg: SweepConfig) -> int:
    """Trials that fit at once, leaving 2 CPUs for Ray Data (see pipelines.train_config)."""
    if cfg.sweep.max_concurrent_trials:
        return cfg.sweep.max_concurrent_trials
    resources = ray.cluster_resources()
    if cfg.scaling.use_gpu:
        per_trial = cfg.scaling.num_workers * cfg.scaling.resources_per_worker.get("GPU", 1.0)
        return max(1, int(resources.get("GPU", 0) // per_trial))
    per_trial = cfg.scaling.num_workers * cfg.scaling.resources_per_worker.get("CPU", 1.0)
    return max(1, int((resources.get("CPU", 0) - 2) // per_trial))


def run_trial(params: dict[str, Any], base: dict[str, Any], sweep_dir: str, objective: str,
              benchmark: dict[str, Any]) -> None:
    """A Tune trial: fit one TorchTrainer, then (for a benchmark objective) score its model."""
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(base, params, str(Path(sweep_dir) / "trials" / trial_id))
    result = run(cfg, callbacks=[TuneReportCallback()])
    final = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
    if objective == "ifeval":
        final["ifeval"] = benchmark_score(result["export_dir"], Path(cfg.output_dir), benchmark)
    tune.report({**final, "export_dir": str(result["export_dir"])})


def benchmark_score(export_dir: Path, trial_dir: Path, benchmark: dict[str, Any]) -> float:
    """Prompt-level strict IFEval accuracy of the trial's model on the held-out prompts."""
    from pipelines.evaluate import EvaluateConfig, evaluate

    cfg = load_config(EvaluateConfig, None, [
        f"output_dir={trial_dir / 'benchmark'}", f"generation.model.path={export_dir}",
        "generation.benchmarks=[ifeval]", f"generation.ifeval.data_path={benchmark['prompts']}",
        f"generation.ifeval.limit={benchmark['limit']}",
        f"generation.ifeval.decoding.max_new_tokens={benchmark['max_new_tokens']}",
        "ifeval_on_missing_punkt=exclude"])
    return float(evaluate(cfg)["ifeval"]["prompt_level_strict_acc"])


def sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the sweep; write the results table and export the best trial."""
    objective = cfg.sweep.objective
    if objective not in OBJECTIVE_MODES:
        raise ValueError(f"sweep.objective must be one of {sorted(OBJECTIVE_MODES)}, got {objective!r}")
    mode = OBJECTIVE_MODES[objective]
    output_dir = Path(cfg.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    # Trials report eval metrics only at eval steps; ASHA skips results without the metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    init_ray(cfg)

    base = to_dict(cfg)
    base["model"]["name_or_path"] = model_path = resolve_model_path(cfg.model, output_dir)
    data_dir = Path(cfg.data_pipeline.data_dir).resolve() if cfg.data_pipeline.data_dir else output_dir / "data"
    base["data_pipeline"]["data_dir"] = str(data_dir)
    load_tokenizer(model_path, cfg.model)  # fail early on a bad model path
    data_pipeline.preprocess(cfg.data, cfg.data_pipeline, model_path, cfg.model.trust_remote_code, data_dir)
    benchmark = {"limit": cfg.sweep.benchmark_limit, "max_new_tokens": cfg.sweep.benchmark_max_new_tokens,
                 "prompts": cfg.sweep.benchmark_prompts}
    if objective == "ifeval" and benchmark["prompts"] is None:
        found = data_pipeline.heldout_prompts(data_dir, output_dir / "heldout_prompts.jsonl")
        benchmark["prompts"] = str(found) if found else None  # None: the shared IFEval prompts

    trainable = tune.with_parameters(run_trial, base=base, sweep_dir=str(output_dir), objective=objective,
                                     benchmark=benchmark)
    trainable = tune.with_resources(trainable, {"CPU": 0.01})
    storage = output_dir / "tune"
    if tune.Tuner.can_restore(str(storage / "sweep")):
        tuner = tune.Tuner.restore(str(storage / "sweep"), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=search_space(cfg.sweep.space),
                           tune_config=_tune_config(cfg, objective, mode),
                           run_config=tune.RunConfig(name="sweep", storage_path=str(storage)))
    results = tuner.fit()
    return write_results(results, output_dir, objective, mode, list(cfg.sweep.space))


def _tune_config(cfg: SweepConfig, objective: str, mode: str) -> tune.TuneConfig:
    search_alg = None
    if cfg.sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch()
    scheduler = None
    if cfg.sweep.asha:
        asha_metric = objective if objective.startswith("eval/") else "eval/loss"
        asha_mode = OBJECTIVE_MODES[asha_metric]
        scheduler = tune.schedulers.ASHAScheduler(
            metric=asha_metric, mode=asha_mode, time_attr="step", grace_period=cfg.sweep.asha_grace_steps,
            reduction_factor=cfg.sweep.asha_reduction_factor,
            # Past the last step: at max_t ASHA stops the trial, which would kill it mid-export.
            max_t=(cfg.train.max_steps or 10**9) + 1)
    return tune.TuneConfig(metric=None if scheduler else objective, mode=None if scheduler else mode,
                           search_alg=search_alg, scheduler=scheduler, num_samples=cfg.sweep.num_samples,
                           max_concurrent_trials=max_concurrent(cfg))


def write_results(results: tune.ResultGrid, output_dir: Path, objective: str, mode: str,
                  params: list[str]) -> dict[str, Any]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        rows.append({"trial_id": metrics.get("trial_id", Path(result.path).name),
                     "config": {k: result.config.get(k) for k in params},
                     "metrics": {k: v for k, v in metrics.items()
                                 if k.startswith(("eval/", "loss", "nll", "step", "ifeval"))},
                     "export_dir": metrics.get("export_dir"),
                     "status": "ERROR" if result.error else "TERMINATED"})
    (output_dir / "results.json").write_text(json.dumps(rows, indent=2))
    metric_names = sorted({k for r in rows for k in r["metrics"]})
    with (output_dir / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", *params, *metric_names, "status"])
        for r in rows:
            writer.writerow([r["trial_id"], *(r["config"][p] for p in params),
                             *(r["metrics"].get(m, "") for m in metric_names), r["status"]])
    scored = [r for r in rows if objective in r["metrics"] and r["export_dir"]]
    if not scored:
        raise RuntimeError(f"no trial finished with the objective '{objective}': see {output_dir / 'results.json'}")
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda r: r["metrics"][objective])
    best_export = output_dir / "best" / "export"
    shutil.rmtree(best_export, ignore_errors=True)
    shutil.copytree(best["export_dir"], best_export)
    summary = {"metric": objective, "mode": mode, "value": best["metrics"][objective], "config": best["config"],
               "trial_id": best["trial_id"], "export_dir": str(best_export)}
    (output_dir / "best.json").write_text(json.dumps(summary, indent=2))
    print(f"sweep results: {output_dir / 'results.csv'}\nbest {objective} = {summary['value']:.4g} with "
          f"{summary['config']}\nbest model exported to {best_export}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config: a training config plus a `sweep:` section")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sweep.objective=ifeval")
    args = parser.parse_args(argv)
    return sweep(load_config(SweepConfig, args.config, args.overrides))


if __name__ == "__main__":
    main()
