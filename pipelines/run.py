"""One command from data to report: ``python -m pipelines.run --config configs/quickstart.yaml``.

Stages, each writing into the run directory and recorded in ``manifest.json``:
``base`` (optional: pretrain the shared base every method starts from, ``pipelines.base``) →
``data`` (tokenize once, shared) → ``sweep/<method>`` (optional) → ``train/<method>`` →
``eval/<method>`` (generate, then score the benchmarks, rewards and diversity); then the reward
win rates against the baseline method (``winrate.json``) and the report (``report.md``,
``report.html``, ``summary.json``) are rebuilt. A rerun resumes at the first incomplete stage;
a run directory made with a different config is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from evaluation.settings import FIXTURE_JUDGE_MODEL, JudgeConfig
from orpo.config import load_config, replace_values, to_dict
from orpo.modeling import resolve_model_path
from orpo.sources import HUB_PREFIX, expand_files, is_synthetic
from pipelines import data as data_pipeline
from pipelines.base import base_export, corpus_spec, pretrain
from pipelines.config import Config, MethodConfig

HELDOUT = "heldout"


def config_hash(cfg: Config) -> str:
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


def input_hashes(cfg: Config) -> dict[str, str]:
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
    if cfg.base.enabled:
        out["base corpus"] = corpus_spec(cfg)
    return out


class Manifest:
    """``manifest.json``: config, versions, hardware, input hashes and each stage's status."""

    def __init__(self, run_dir: Path, cfg: Config):
        self.path = run_dir / "manifest.json"
        digest = config_hash(cfg)
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            if self.data.get("config_hash") != digest:
                raise ValueError(f"{run_dir} was made with a different config; use another output_dir "
                                 "or delete the run directory to start over")
            inputs = input_hashes(cfg)  # rechecked at every resume: data files can change under a run
            if self.data.get("inputs") != inputs:
                recorded = self.data.get("inputs") or {}
                changed = sorted(k for k in set(recorded) | set(inputs) if recorded.get(k) != inputs.get(k))
                raise ValueError(f"{run_dir} was made from other input data ({', '.join(changed)} changed); "
                                 "use another output_dir or delete the run directory to start over")
        else:
            self.data = {"name": cfg.name, "config_hash": digest, "config": to_dict(cfg), "versions": versions(),
                         "hardware": hardware(), "inputs": input_hashes(cfg),
                         "methods": [m.name for m in cfg.methods], "stages": {}}
            self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
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


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory: a second run into it refuses at once.

    Two runs in one directory used to overwrite each other's manifest and outputs. The lock is an
    OS file lock (released when the process dies, so a crash never leaves it stale).
    """
    import fcntl

    path = run_dir / "run.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RuntimeError(f"{run_dir} is in use by another run ({holder}); wait for it or use another "
                               "output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def method_config(cfg: Config, method: MethodConfig, run_dir: Path, output_dir: Path,
                  extra: dict[str, Any] | None = None) -> Config:
    """The config a method trains (or sweeps) with: the run's, the method's values, then ``extra``.

    With ``base.enabled`` every method starts from the pretrained base's export."""
    start = str(base_export(run_dir)) if cfg.base.enabled else resolve_model_path(cfg.model, run_dir)
    base = replace_values(cfg, {"name": f"{cfg.name}-{method.name}", "methods": [],
                                "model.name_or_path": start,
                                "data_pipeline.data_dir": str(run_dir / "data")})
    return replace_values(base, {**method.overrides, **(extra or {}), "output_dir": str(output_dir)})


def _inside(run_dir: Path, path: Path) -> Path:
    """``path``, after checking that it resolves inside the run directory (it is about to be deleted)."""
    resolved = path.resolve()
    if resolved == run_dir or run_dir not in resolved.parents:
        raise ValueError(f"refusing to delete {resolved}: it is not inside the run directory {run_dir}")
    return resolved


def run_pipeline(cfg: Config) -> dict[str, Any]:
    """Run (or resume) every stage into ``output_dir``, holding the run directory's lock."""
    run_dir = Path(cfg.output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        return _run_stages(cfg, run_dir)


def _run_stages(cfg: Config, run_dir: Path) -> dict[str, Any]:
    from pipelines.evaluate import evaluate
    from pipelines.ray_runtime import init_ray
    from pipelines.sweep import sweep
    from pipelines.train import run as train

    manifest = Manifest(run_dir, cfg)
    init_ray(cfg)
    model_path = resolve_model_path(cfg.model, run_dir)  # `tiny` is built at run_dir/base_model

    if cfg.base.enabled and not manifest.done("base"):
        with manifest.stage("base"):
            shutil.rmtree(_inside(run_dir, run_dir / "base"), ignore_errors=True)  # an interrupted attempt starts clean
            pretrain(cfg, run_dir, model_path)
    # The methods' model: the data is tokenized with its own tokenizer files, which the trainers check.
    start_path = str(base_export(run_dir)) if cfg.base.enabled else model_path

    if not manifest.done("data"):
        with manifest.stage("data"):
            data_pipeline.preprocess(cfg.data, cfg.data_pipeline, start_path,
                                     cfg.model.trust_remote_code, run_dir / "data")
            data_pipeline.heldout_prompts(run_dir / "data", run_dir / "data" / "heldout_prompts.jsonl")

    for method in cfg.methods:
        best: dict[str, Any] = {}
        if method.sweep:
            stage = f"sweep/{method.name}"
            sweep_dir = run_dir / "sweep" / method.name
            if not manifest.done(stage):
                with manifest.stage(stage):
                    sweep(method_config(cfg, method, run_dir, sweep_dir))
            best = json.loads((sweep_dir / "best.json").read_text())["config"]
        stage = f"train/{method.name}"
        if not manifest.done(stage):
            with manifest.stage(stage):
                train_dir = _inside(run_dir, run_dir / "train" / method.name)
                shutil.rmtree(train_dir, ignore_errors=True)  # an interrupted attempt starts clean
                train(method_config(cfg, method, run_dir, train_dir, best))

    with _judge(cfg) as judge_url:
        for method in cfg.methods:
            stage = f"eval/{method.name}"
            if not manifest.done(stage):
                with manifest.stage(stage):
                    evaluate(evaluation_config(cfg, method, run_dir, judge_url))

    if cfg.evaluation.reward is not None:
        from pipelines.reward_diversity import write_winrates

        write_winrates(run_dir, [m.name for m in cfg.methods], cfg.evaluation.reward.baseline_method)

    from evaluation.report import build_report

    paths = build_report([run_dir], run_dir)  # always rebuilt: cheap, and reflects every stage
    print(f"report: {paths['html']}", flush=True)
    return paths


def evaluation_config(cfg: Config, method: MethodConfig, run_dir: Path, judge_url: str | None) -> Config:
    """The evaluation of a method's exported model."""
    values: dict[str, Any] = {"model.name_or_path": str(run_dir / "train" / method.name / "export"),
                              "model.display_name": f"{cfg.name}-{method.name}", "methods": []}
    if cfg.generation.ifeval.data_path == HELDOUT:
        values["generation.ifeval.data_path"] = str(run_dir / "data" / "heldout_prompts.jsonl")
    if judge_url is not None:
        values["evaluation.judge"] = dataclasses.replace(cfg.evaluation.judge or JudgeConfig(), base_url=judge_url,
                                                         model=FIXTURE_JUDGE_MODEL, api_key_env=None)
    return replace_values(cfg, {**values, "output_dir": str(run_dir / "eval" / method.name)})


@contextlib.contextmanager
def _judge(cfg: Config) -> Iterator[str | None]:
    if not cfg.evaluation.fixture_judge:
        yield None
        return
    from evaluation.fixture_judge import FixtureJudgeConfig, serve_fixture_judge

    with serve_fixture_judge(FixtureJudgeConfig()) as server:
        print(f"judging with the FIXTURE judge at {server.base_url} (deterministic, not a real judge)", flush=True)
        yield server.base_url


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loop.max_steps=50")
    args = parser.parse_args(argv)
    return run_pipeline(load_config(Config, args.config, args.overrides))


if __name__ == "__main__":
    main()
