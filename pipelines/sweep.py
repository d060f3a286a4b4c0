"""Hyperparameter sweeps: ``python -m pipelines.sweep --config configs/sweep_tiny.yaml key=value``.

Ray Tune in the current Ray Train idiom: each trial is a small Tune function (given a sliver of
CPU) that builds and fits a ``TorchTrainer`` (``pipelines.train.run``) and forwards its reports
to Tune. The data is tokenized once and shared by all trials. ASHA stops weak trials on the eval
metric; the objective is an eval metric or a benchmark score measured after training (the
trial's model answers held-out prompts and is scored by the IFEval checkers). Objectives must
compare models trained with different λ or β, so ``eval/loss`` (NLL + λ·L_OR, larger for larger
λ on the same model) is not one: see ``pipelines.config.OBJECTIVE_MODES``. An interrupted
sweep resumes with ``Tuner.restore`` without redoing finished trials.

Outputs (``output_dir``): ``results.csv`` / ``results.json`` (one row per trial),
``best.json`` and ``best/export`` (the best trial's model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import ray
from ray import tune

from orpo.config import from_dict, load_config, replace_values, to_dict
from orpo.job import claim_output_dir
from orpo.modeling import load_tokenizer, resolve_model_path
from pipelines import data as data_pipeline
from pipelines.config import OBJECTIVE_MODES, Config
from pipelines.ray_runtime import init_ray
from pipelines.train import run


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


def trial_config(base: Config, params: dict[str, Any], output_dir: str) -> Config:
    """The trial's config: the base with the sampled values (type-checked) and its own output dir."""
    return replace_values(base, {**params, "output_dir": output_dir})


def max_concurrent(cfg: Config) -> int:
    """Trials that fit at once, leaving 2 CPUs for Ray Data (see pipelines.config)."""
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
    cfg = trial_config(from_dict(Config, base), params, str(Path(sweep_dir) / "trials" / trial_id))
    result = run(cfg, callbacks=[TuneReportCallback()])
    final = {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
    if objective == "ifeval":
        final["ifeval"] = benchmark_score(cfg, result["export_dir"], benchmark)
    tune.report({**final, "export_dir": str(result["export_dir"])})


def benchmark_score(cfg: Config, export_dir: Path, benchmark: dict[str, Any]) -> float:
    """Prompt-level strict IFEval accuracy of the trial's model on the held-out prompts."""
    from pipelines.evaluate import evaluate

    scored = replace_values(cfg, {
        "output_dir": str(Path(cfg.output_dir) / "benchmark"), "model.name_or_path": str(export_dir),
        "generation.benchmarks": ["ifeval"], "generation.ifeval.data_path": benchmark["prompts"],
        "generation.ifeval.limit": benchmark["limit"],
        "generation.ifeval.decoding.max_new_tokens": benchmark["max_new_tokens"],
        "evaluation.ifeval_on_missing_punkt": "exclude"})
    return float(evaluate(scored)["ifeval"]["prompt_level_strict_acc"])


def sweep(cfg: Config) -> dict[str, Any]:
    """Run (or resume) the sweep; write the results table and export the best trial."""
    objective = cfg.sweep.objective
    mode = OBJECTIVE_MODES[objective]
    output_dir = Path(cfg.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    # Trials report eval metrics only at eval steps; ASHA skips results without the metric.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    init_ray(cfg)

    model_path = resolve_model_path(cfg.model, output_dir)
    data_dir = Path(cfg.data_pipeline.data_dir).resolve() if cfg.data_pipeline.data_dir else output_dir / "data"
    base = to_dict(replace_values(cfg, {"model.name_or_path": model_path, "data_pipeline.data_dir": str(data_dir)}))
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
    # Tuner.restore keeps the search space it was started with: a changed sweep must not resume it.
    claim_output_dir(to_dict(cfg), output_dir, extra_keys=("sweep",))
    if tune.Tuner.can_restore(str(storage / "sweep")):
        tuner = tune.Tuner.restore(str(storage / "sweep"), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=search_space(cfg.sweep.space),
                           tune_config=_tune_config(cfg, objective, mode),
                           run_config=tune.RunConfig(name="sweep", storage_path=str(storage)))
    results = tuner.fit()
    return write_results(results, output_dir, objective, mode, list(cfg.sweep.space))


def _tune_config(cfg: Config, objective: str, mode: str) -> tune.TuneConfig:
    search_alg = None
    if cfg.sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch()
    scheduler = None
    if cfg.sweep.asha:
        asha_metric = objective if objective.startswith("eval/") else "eval/logps/margin"
        asha_mode = OBJECTIVE_MODES[asha_metric]
        scheduler = tune.schedulers.ASHAScheduler(
            metric=asha_metric, mode=asha_mode, time_attr="step", grace_period=cfg.sweep.asha_grace_steps,
            reduction_factor=cfg.sweep.asha_reduction_factor,
            # Past the last step: at max_t ASHA stops the trial, which would kill it mid-export.
            max_t=(cfg.loop.max_steps or 10**9) + 1)
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
    parser.add_argument("--config", help="YAML config: the training sections plus a `sweep:` section")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sweep.objective=ifeval")
    args = parser.parse_args(argv)
    return sweep(load_config(Config, args.config, args.overrides))


if __name__ == "__main__":
    main()
