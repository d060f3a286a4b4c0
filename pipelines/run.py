"""One command from data to report: ``python -m pipelines.run --config configs/quickstart.yaml``.

Stages, each writing into the run directory and recorded in ``manifest.json``:
``data`` (tokenize once, shared) → ``sweep/<method>`` (optional) → ``train/<method>`` →
``eval/<method>`` (generate, then score the benchmarks); then the report (``report.md``,
``report.html``, ``summary.json``) is rebuilt. A rerun resumes at the first incomplete stage;
a run directory made with a different config is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from orpo.config import apply_overrides, from_dict, load_config, to_dict
from orpo.modeling import resolve_model_path
from orpo.sources import HUB_PREFIX, expand_files, is_synthetic
from pipelines import data as data_pipeline
from pipelines.evaluate import EvaluateConfig
from pipelines.sweep import SweepConfig, SweepSettings
from pipelines.train_config import DistributedTrainConfig

HELDOUT = "heldout"


@dataclass
class MethodConfig:
    """One training method of the run."""

    name: str
    """Label used for directories and the report (e.g. ``orpo``, ``sft``)."""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides of the base ``train`` config (e.g. ``loss.type=sft``)."""
    sweep: bool = False
    """Sweep this method with ``sweep`` first and train it with the best config found."""


@dataclass
class PipelineConfig:
    """A whole run: data, methods, optional sweep, generation, benchmarks and judge."""

    name: str = "run"
    """Run name."""
    output_dir: str = "runs/run"
    """The run directory."""
    train: DistributedTrainConfig = field(default_factory=DistributedTrainConfig)
    """Base training config (data, model, loop, Ray, DeepSpeed) shared by every method."""
    methods: list[MethodConfig] = field(default_factory=lambda: [MethodConfig("orpo"),
                                                                 MethodConfig("sft", ["loss.type=sft"])])
    """Methods to train and compare."""
    sweep: SweepSettings = field(default_factory=SweepSettings)
    """The search for methods with ``sweep: true``."""
    evaluation: EvaluateConfig = field(default_factory=EvaluateConfig)
    """Generation, benchmarks and judge. ``generation.ifeval.data_path: heldout`` scores the
    held-out pairs' prompts with the IFEval checkers (the synthetic set carries instructions)."""
    fixture_judge: bool = False
    """Start the clearly labelled deterministic FIXTURE judge on loopback and judge with it
    (for demos and tests; its verdicts mean nothing about quality)."""


def config_hash(cfg: PipelineConfig) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "transformers", "ray", "deepspeed", "datasets", "orpo-pipeline"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def hardware() -> dict[str, Any]:
    import psutil
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "gpus": gpus}


def input_hashes(cfg: DistributedTrainConfig) -> dict[str, str]:
    """Content hashes of local data files; name@revision for hub data; the synthetic spec."""
    out = {}
    for source in filter(None, (cfg.data.source, cfg.data.eval_source)):
        if is_synthetic(source):
            out[source] = f"synthetic(size={cfg.data.synthetic_size}, seed={cfg.data.seed})"
        elif source.startswith(HUB_PREFIX) or "://" in source:
            out[source] = f"revision={cfg.data.revision or 'latest'}"
        else:
            for file in expand_files(source):
                digest = hashlib.sha256()
                with open(file, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                out[file] = digest.hexdigest()
    return out


class Manifest:
    """``manifest.json``: config, versions, hardware, input hashes and each stage's status."""

    def __init__(self, run_dir: Path, cfg: PipelineConfig):
        self.path = run_dir / "manifest.json"
        digest = config_hash(cfg)
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            if self.data.get("config_hash") != digest:
                raise ValueError(f"{run_dir} was made with a different config; use another output_dir "
                                 "or delete the run directory to start over")
        else:
            self.data = {"name": cfg.name, "config_hash": digest, "config": to_dict(cfg), "versions": versions(),
                         "hardware": hardware(), "inputs": input_hashes(cfg.train),
                         "methods": [m.name for m in cfg.methods], "stages": {}}
            self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    def done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    @contextlib.contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        started = time.time()
        self.data["stages"][stage] = {"status": "running", "started": _now(), "finished": None, "wall_s": None}
        self.save()
        print(f"== stage {stage}", flush=True)
        try:
            yield
        except BaseException:
            self.data["stages"][stage].update(status="failed", finished=_now(), wall_s=time.time() - started)
            self.save()
            raise
        self.data["stages"][stage].update(status="done", finished=_now(), wall_s=time.time() - started)
        self.save()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def method_config(cfg: PipelineConfig, method: MethodConfig, run_dir: Path, extra: list[str] = ()
                  ) -> dict[str, Any]:
    base = to_dict(cfg.train)
    apply_overrides(base, [*method.overrides, *extra])
    base.update(name=f"{cfg.name}-{method.name}")
    base["model"]["name_or_path"] = str(run_dir / "base_model") if cfg.train.model.name_or_path == "tiny" \
        else base["model"]["name_or_path"]
    base["data_pipeline"]["data_dir"] = str(run_dir / "data")
    return base


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    from pipelines.evaluate import evaluate
    from pipelines.sweep import sweep
    from pipelines.train import init_ray, run as train

    run_dir = Path(cfg.output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir, cfg)
    init_ray(cfg.train)
    model_path = resolve_model_path(cfg.train.model, run_dir)  # `tiny` is built at run_dir/base_model

    if not manifest.done("data"):
        with manifest.stage("data"):
            data_pipeline.preprocess(cfg.train.data, cfg.train.data_pipeline, model_path,
                                     cfg.train.model.trust_remote_code, run_dir / "data")
            data_pipeline.heldout_prompts(run_dir / "data", run_dir / "data" / "heldout_prompts.jsonl")

    for method in cfg.methods:
        best: list[str] = []
        if method.sweep:
            stage = f"sweep/{method.name}"
            sweep_dir = run_dir / "sweep" / method.name
            if not manifest.done(stage):
                with manifest.stage(stage):
                    sweep_cfg = method_config(cfg, method, run_dir, [f"output_dir={sweep_dir}"])
                    sweep_cfg["sweep"] = to_dict(cfg.sweep)
                    sweep(from_dict(SweepConfig, sweep_cfg))
            best = [f"{k}={json.dumps(v)}" for k, v in json.loads((sweep_dir / "best.json").read_text())["config"].items()]
        stage = f"train/{method.name}"
        if not manifest.done(stage):
            with manifest.stage(stage):
                train_dir = run_dir / "train" / method.name
                shutil.rmtree(train_dir, ignore_errors=True)  # an interrupted attempt starts clean
                train(from_dict(DistributedTrainConfig,
                                method_config(cfg, method, run_dir, [*best, f"output_dir={train_dir}"])))

    with _judge(cfg) as judge_url:
        for method in cfg.methods:
            stage = f"eval/{method.name}"
            if not manifest.done(stage):
                with manifest.stage(stage):
                    evaluate(evaluation_config(cfg, method, run_dir, judge_url))

    from evaluation.report import build_report

    paths = build_report([run_dir], run_dir)  # always rebuilt: cheap, and reflects every stage
    print(f"report: {paths['html']}", flush=True)
    return paths


def evaluation_config(cfg: PipelineConfig, method: MethodConfig, run_dir: Path, judge_url: str | None
                      ) -> EvaluateConfig:
    data = to_dict(cfg.evaluation)
    overrides = [f"output_dir={run_dir / 'eval' / method.name}",
                 f"generation.model.path={run_dir / 'train' / method.name / 'export'}",
                 f"generation.model.name={cfg.name}-{method.name}"]
    if data["generation"]["ifeval"]["data_path"] == HELDOUT:
        overrides.append(f"generation.ifeval.data_path={run_dir / 'data' / 'heldout_prompts.jsonl'}")
    if judge_url is not None:
        overrides += [f"judge.base_url={judge_url}", "judge.model=fixture-judge", "judge.api_key_env=null"]
    apply_overrides(data, overrides)
    return from_dict(EvaluateConfig, data)


@contextlib.contextmanager
def _judge(cfg: PipelineConfig) -> Iterator[str | None]:
    if not cfg.fixture_judge:
        yield None
        return
    from evaluation.fixture_judge import FixtureJudgeConfig, serve_fixture_judge

    with serve_fixture_judge(FixtureJudgeConfig()) as server:
        print(f"judging with the FIXTURE judge at {server.base_url} (deterministic, not a real judge)", flush=True)
        yield server.base_url


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.train.max_steps=50")
    args = parser.parse_args(argv)
    return run_pipeline(load_config(PipelineConfig, args.config, args.overrides))


if __name__ == "__main__":
    main()
