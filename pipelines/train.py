"""Training: ``python -m pipelines.train --config configs/tiny_cpu.yaml key=value``.

``launcher: ray`` (the default) runs the job on Ray Train; ``launcher: local`` runs the same job
in this one process without Ray (``orpo.train_local``). Both build it with ``orpo.job``.

Under Ray the driver tokenizes the data with Ray Data (``pipelines.data``), then a Ray Train
``TorchTrainer`` runs the ``orpo`` training loop in every worker under DeepSpeed ZeRO, fed by
``get_dataset_shard``. Without a cluster address it starts an embedded local Ray; the same
command runs under ``ray job submit --working-dir . -- python -m pipelines.train ...``.

Outputs (``output_dir``): ``metrics.jsonl``, ``data_stats.json``, ``rejects.jsonl``,
``tokenized/``, ``ray/`` (Ray Train storage with the checkpoints, unless configured elsewhere)
and ``export/`` (a Hugging Face checkpoint in safetensors with its tokenizer).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import yaml
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback

from orpo.config import from_dict, load_config, to_dict
from orpo.context import format_metrics
from orpo.job import TrainingJob, attach_engine, build_job, claim_output_dir, export_trained, seed_for_training
from orpo.metrics_log import MetricsLog
from orpo.modeling import load_tokenizer, resolve_model_path
from orpo.trainer import LoopInputs, train
from pipelines import data as data_pipeline
from pipelines.config import Config
from pipelines.deepspeed_engine import (
    DeepSpeedEngine,
    deepspeed_config,
    disable_cpu_shm_comm,
    inference_engine,
    use_bf16,
)
from pipelines.ray_runtime import init_ray

EXPORT_DIR = "export"


class RayTrainContext:
    """``orpo.context.TrainContext`` inside a Ray Train worker."""

    def __init__(self, cfg: Config) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.checkpoint_dir = Path(tempfile.mkdtemp(prefix=f"orpo-rank{self.rank}-"))
        # A fault-tolerance restart resumes from Ray's latest checkpoint; a new job from resume_from.
        checkpoint = ray.train.get_checkpoint()
        self.restarted = checkpoint is not None
        if checkpoint is not None:
            self.restore_dir: Path | None = Path(checkpoint.to_directory())
        else:
            self.restore_dir = Path(cfg.checkpoint.resume_from) if cfg.checkpoint.resume_from else None

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)
        if checkpoint is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)  # persisted to storage by report()


class MetricsWriter(UserCallback):
    """On the controller: append rank 0's metrics to ``metrics.jsonl``, print them, feed trackers."""

    def __init__(self, output_dir: str, tracking: dict[str, Any]):
        self.log = MetricsLog(Path(output_dir) / "metrics.jsonl")  # a resumed run's repeated steps replace the old
        self.tracking = tracking
        self.start = time.time()
        self._writers: list[Any] | None = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        row = dict(metrics[0])
        if "exported" in row:
            return  # the export report carries no training metrics
        self.log.append(row)
        print(format_metrics(row, time.time() - self.start), flush=True)
        for log in self._trackers():
            log(row)

    def _trackers(self) -> list[Any]:
        if self._writers is None:
            from pipelines.tracking import make_trackers

            self._writers = make_trackers(self.tracking, self.log.path.parent)
        return self._writers


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the ``orpo`` job under DeepSpeed, fed by its dataset shard."""
    cfg = from_dict(Config, config["cfg"])
    ctx = RayTrainContext(cfg)
    if ctx.restore_dir is not None and (ctx.restore_dir / EXPORT_DIR).exists():
        if ctx.restarted:
            return  # the run had finished and exported before this restart
        raise ValueError(f"checkpoint.resume_from={ctx.restore_dir} is a finished job's export checkpoint; "
                         f"to train on from its weights set model.name_or_path={ctx.restore_dir / EXPORT_DIR}")

    if not cfg.scaling.use_gpu:
        disable_cpu_shm_comm()
    import deepspeed

    deepspeed.init_distributed()  # adopts Ray's process group, so DeepSpeed sees the real world size
    ds_config = deepspeed_config(cfg, ctx.world_size)
    dtype = torch.bfloat16 if use_bf16(cfg) else torch.float32
    zero3 = cfg.deepspeed.zero_stage == 3
    hf_ds_config = None
    if zero3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)  # must live while models load: ZeRO-3 init
    device = None if zero3 else ctx.device  # ZeRO-3 places the partitioned weights itself
    job = build_job(cfg, config["model_path"], device, dtype)
    engine = DeepSpeedEngine(job.model, cfg, ds_config, cfg.loop.total_steps(config["steps_per_epoch"]))
    attach_engine(job, cfg, engine.module, device, dtype,
                  wrap_reference=(lambda model: inference_engine(model, ds_config)) if zero3 else None)
    if hf_ds_config is not None:  # models are loaded: later loads (the LoRA export's rebuild) stay whole
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        del hf_ds_config
        unset_hf_deepspeed_config()
    seed_for_training(cfg, ctx.rank)

    collator = job.collator(cfg.data.pad_to_multiple_of)
    micro = cfg.loop.micro_batch_size
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval") if config["has_eval"] else None

    def train_batches(epoch: int):
        return data_pipeline.worker_batches(train_shard, collator, micro, epoch, cfg.data.seed, cfg.data_pipeline,
                                            cfg.data.group_by_length)

    def eval_batches():
        return data_pipeline.worker_batches(eval_shard, collator, micro, 0, cfg.data.seed, cfg.data_pipeline,
                                            False, drop_last=False)

    inputs = LoopInputs(train_batches, config["steps_per_epoch"], eval_batches if eval_shard else None,
                        job.reference, job.chunked)
    state = train(cfg, ctx, engine, inputs)
    export(cfg, ctx, engine, job, state.step)


def export(cfg: Config, ctx: RayTrainContext, engine: DeepSpeedEngine, job: TrainingJob, step: int) -> None:
    """Gather the full weights (collective under ZeRO-3) and report a HF checkpoint from rank 0."""
    state_dict = engine.full_state_dict()
    if ctx.rank != 0:
        ray.train.report({"step": step, "exported": 1.0})
        return
    directory = Path(tempfile.mkdtemp(prefix="orpo-export-"))
    export_trained(cfg, job, directory / EXPORT_DIR, state_dict)
    ray.train.report({"step": step, "exported": 1.0}, checkpoint=Checkpoint.from_directory(str(directory)))
    shutil.rmtree(directory, ignore_errors=True)


# Ray Data's streaming read tasks take one CPU each; with none left beside the workers they never run.
DATA_TASK_CPUS = 1.0


def check_placement(cfg: Config, cluster: dict[str, float]) -> None:
    """Refuse a job whose workers would take every CPU the cluster has, starving Ray Data.

    Ray Train places the workers first; Ray Data then gets what is left, and with nothing left its
    read tasks wait forever, with no error ("The job may hang forever"). ``cluster`` is
    ``ray.cluster_resources()``.
    """
    if not cfg.scaling.check_placement:
        return
    workers = cfg.scaling.num_workers
    per_worker = cfg.scaling.resources_per_worker.get("CPU", 1.0)
    needed, total = workers * per_worker, float(cluster.get("CPU", 0.0))
    if needed <= total < needed + DATA_TASK_CPUS:
        raise RuntimeError(
            f"the cluster has {total:g} CPUs and the {workers} training workers take {needed:g} "
            f"({workers} × scaling.resources_per_worker.CPU={per_worker:g}), leaving {total - needed:g} for Ray "
            f"Data's read tasks, which need {DATA_TASK_CPUS:g}: the job would wait forever. Lower "
            "scaling.resources_per_worker.CPU (e.g. 0.5) or scaling.num_workers, give Ray more CPUs "
            "(ray.num_cpus for an embedded Ray), or set scaling.check_placement=false on an autoscaling "
            "cluster")


def _ordered_execution() -> ray.data.ExecutionOptions:
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def run(cfg: Config, callbacks: list[UserCallback] | tuple = ()) -> dict[str, Any]:
    """The whole job: preprocess, fit, export. Returns paths, data stats and the final metrics.

    ``callbacks`` are extra Ray Train callbacks (a sweep passes Tune's report callback).
    """
    started = time.time()
    output_dir = Path(cfg.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    claim_output_dir(to_dict(cfg), output_dir)  # a rerun with other settings must not resume this one
    (output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    init_ray(cfg)
    check_placement(cfg, ray.cluster_resources())
    model_path = resolve_model_path(cfg.model, output_dir)
    load_tokenizer(model_path, cfg.model)  # fail early, before any worker starts
    data_dir = Path(cfg.data_pipeline.data_dir).resolve() if cfg.data_pipeline.data_dir else output_dir
    stats = data_pipeline.preprocess(cfg.data, cfg.data_pipeline, model_path, cfg.model.trust_remote_code, data_dir)
    if data_dir != output_dir:
        for name in ("data_stats.json", "rejects.jsonl"):
            shutil.copy(data_dir / name, output_dir / name)
    print(f"data: read {stats['read']}, accepted {stats['accepted']}, rejected {stats['rejected']} "
          f"{stats['rejected_by_reason'] or ''}", flush=True)
    ray.data.DataContext.get_current().enable_progress_bars = False  # per-epoch bars would drown the metrics
    datasets = {"train": data_pipeline.split_dataset(data_dir, "train", cfg.data.seed)}
    eval_ds = data_pipeline.split_dataset(data_dir, "eval", cfg.data.seed)
    if eval_ds is not None and stats["eval_pairs"] >= cfg.scaling.num_workers:
        datasets["eval"] = eval_ds
    if cfg.loss.type.needs_reference_model and cfg.loss.precompute_reference:
        datasets = data_pipeline.with_reference_logps(datasets, cfg, model_path, output_dir / "reference_logps")
    config = {"cfg": to_dict(cfg), "model_path": model_path, "has_eval": "eval" in datasets,
              "steps_per_epoch": cfg.loop.steps_per_epoch(stats["train_pairs"], cfg.scaling.num_workers)}
    scaling = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=scaling.resources_per_worker,
                                     placement_strategy=scaling.placement_strategy,
                                     accelerator_type=scaling.accelerator_type),
        run_config=RunConfig(
            name=cfg.name, storage_path=cfg.checkpoint.storage_path or str(output_dir / "ray"),
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
            callbacks=[MetricsWriter(str(output_dir), to_dict(cfg.tracking)), *callbacks]),
        datasets=datasets,
        # Ordered execution makes each worker's shard, and so every run, reproducible.
        dataset_config=ray.train.DataConfig(datasets_to_split="all",
                                            execution_options=_ordered_execution()),
    )
    result = trainer.fit()
    export_dir = output_dir / EXPORT_DIR
    with result.checkpoint.as_directory() as checkpoint_dir:
        shutil.rmtree(export_dir, ignore_errors=True)
        shutil.copytree(Path(checkpoint_dir) / EXPORT_DIR, export_dir)
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    final = {k: v for row in rows for k, v in row.items()}  # the latest value of every metric
    info = run_info(cfg, export_dir, time.time() - started, final.get("tokens_seen", 0.0))
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2))
    print(f"metrics: {output_dir / 'metrics.jsonl'}\ncheckpoints: {result.path}\nmodel exported to {export_dir}",
          flush=True)
    return {"output_dir": output_dir, "export_dir": export_dir, "checkpoints": result.path, "stats": stats,
            "metrics": final}



def run_info(cfg: Config, export_dir: Path, wall_s: float, tokens: float) -> dict[str, Any]:
    """Compute cost of a run. FLOPs are the usual estimate: 6·N per token for the policy's
    forward + backward, plus 2·N per token for DPO's reference forward (ORPO has none)."""
    from safetensors import safe_open

    n_params = 0
    for shard in export_dir.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            n_params += sum(_numel(f.get_slice(name).get_shape()) for name in f.keys())
    reference_flops = 2.0 * n_params * tokens if cfg.loss.type.needs_reference_model else 0.0
    return {
        "method": cfg.loss.type.value,
        "loss": {"type": cfg.loss.type.value, "lam": cfg.loss.lam,
                 "beta": cfg.loss.beta_value() if cfg.loss.type.default_beta is not None else None,
                 "gamma_beta_ratio": cfg.loss.gamma_beta_ratio},
        "wall_s": wall_s,
        "num_workers": cfg.scaling.num_workers,
        "worker_hours": wall_s * cfg.scaling.num_workers / 3600.0,
        "tokens_processed": int(tokens),
        "n_params": n_params,
        "forward_passes_per_pair": 2 if cfg.loss.type.needs_reference_model else 1,
        "flops_estimate": 6.0 * n_params * tokens + reference_flops,
        "reference_flops": reference_flops,
    }


def _numel(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (defaults when omitted)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. deepspeed.zero_stage=3")
    args = parser.parse_args(argv)
    cfg = load_config(Config, args.config, args.overrides)
    if cfg.launcher == "local":
        from orpo.train_local import run as run_local

        return run_local(cfg)
    return run(cfg)


if __name__ == "__main__":
    main()
