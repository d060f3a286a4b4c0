"""Distributed training: ``python -m pipelines.train --config configs/tiny_cpu.yaml key=value``.

The driver tokenizes the data with Ray Data (``pipelines.data``), then a Ray Train
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
import os
import shutil
import socket
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

from orpo.collate import PreferenceCollator
from orpo.config import from_dict, load_config, to_dict
from orpo.context import format_metrics
from orpo.logps import use_chunked
from orpo.modeling import load_model, load_tokenizer, prepare_for_training, resolve_model_path
from orpo.objective import ModelReference
from orpo.trainer import LoopInputs, total_steps, train
from pipelines import data as data_pipeline
from pipelines.deepspeed_engine import DeepSpeedEngine, deepspeed_config, disable_cpu_shm_comm, use_bf16
from pipelines.train_config import DistributedTrainConfig

# ray.train.report blocks ~2 s by default while the controller polls; 0.1 s keeps reports cheap.
RUNTIME_ENV_VARS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "TOKENIZERS_PARALLELISM": "false"}
EXPORT_DIR = "export"


class RayTrainContext:
    """``orpo.context.TrainContext`` inside a Ray Train worker."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.checkpoint_dir = Path(tempfile.mkdtemp(prefix=f"orpo-rank{self.rank}-"))

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)
        if checkpoint is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)  # persisted to storage by report()


class MetricsWriter(UserCallback):
    """On the controller: append rank 0's metrics to ``metrics.jsonl``, print them, feed trackers."""

    def __init__(self, output_dir: str, tracking: dict[str, Any]):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tracking = tracking
        self.start = time.time()
        self._writers: list[Any] | None = None

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        row = dict(metrics[0])
        if "exported" in row:
            return  # the export report carries no training metrics
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(format_metrics(row, time.time() - self.start), flush=True)
        for log in self._trackers():
            log(row)

    def _trackers(self) -> list[Any]:
        if self._writers is None:
            from pipelines.tracking import make_trackers

            self._writers = make_trackers(self.tracking, self.path.parent)
        return self._writers


def _latest_checkpoint_dir(config: dict[str, Any]) -> Path | None:
    """Fault-tolerance restarts resume from Ray's latest checkpoint, a new job from ``resume_from``."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        return Path(checkpoint.to_directory())
    if config["cfg"]["checkpoint"]["resume_from"]:
        return Path(config["cfg"]["checkpoint"]["resume_from"])
    return None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the ``orpo`` loop under DeepSpeed, fed by its dataset shard."""
    cfg = from_dict(DistributedTrainConfig, config["cfg"])
    ctx = RayTrainContext()
    torch.manual_seed(cfg.train.seed)
    resume_from = _latest_checkpoint_dir(config)
    if resume_from is not None and (resume_from / EXPORT_DIR).exists():
        return  # the run had finished and exported before this restart

    if not cfg.scaling.use_gpu:
        disable_cpu_shm_comm()
    import deepspeed

    deepspeed.init_distributed()  # adopts Ray's process group, so DeepSpeed sees the real world size
    ds_config = deepspeed_config(cfg, ctx.world_size)
    hf_ds_config = None
    if cfg.deepspeed.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841  (must live while the model loads: ZeRO-3 init)
    tokenizer = load_tokenizer(config["model_path"], cfg.model)
    dtype = torch.bfloat16 if use_bf16(cfg) else torch.float32
    model = prepare_for_training(load_model(config["model_path"], cfg.model, None, dtype), cfg.model)
    engine = DeepSpeedEngine(model, cfg, ds_config, total_steps(cfg, config["steps_per_epoch"]))
    chunked = use_chunked(engine.module, cfg.train.logits_mode)  # a tiny forward: needs the engine under ZeRO-3
    reference = None
    if cfg.loss.type.needs_reference_model:
        ref_path = cfg.loss.reference_model or config["model_path"]
        reference = ModelReference(load_model(ref_path, cfg.model, ctx.device, dtype), chunked=chunked)

    collator = PreferenceCollator(tokenizer.pad_token_id, cfg.data.pad_to_multiple_of)
    micro = cfg.train.micro_batch_size
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval") if config["has_eval"] else None

    def train_batches(epoch: int):
        return data_pipeline.worker_batches(train_shard, collator, micro, epoch, cfg.data.seed, cfg.data_pipeline,
                                            cfg.data.group_by_length)

    def eval_batches():
        return data_pipeline.worker_batches(eval_shard, collator, micro, 0, cfg.data.seed, cfg.data_pipeline,
                                            False, drop_last=False)

    inputs = LoopInputs(train_batches, config["steps_per_epoch"], eval_batches if eval_shard else None,
                        reference, chunked)
    state = train(cfg, ctx, engine, inputs, resume_from)
    export(ctx, engine, model, tokenizer, state.step)


def export(ctx: RayTrainContext, engine: DeepSpeedEngine, model: torch.nn.Module, tokenizer: Any, step: int) -> None:
    """Gather the full weights (collective under ZeRO-3) and report a HF checkpoint from rank 0."""
    state_dict = engine.full_state_dict()
    if ctx.rank != 0:
        ray.train.report({"step": step, "exported": 1.0})
        return
    directory = Path(tempfile.mkdtemp(prefix="orpo-export-"))
    target = directory / EXPORT_DIR
    unwrapped = model.get_base_model() if hasattr(model, "get_base_model") else model
    unwrapped.save_pretrained(target, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(target)
    ray.train.report({"step": step, "exported": 1.0}, checkpoint=Checkpoint.from_directory(str(directory)))
    shutil.rmtree(directory, ignore_errors=True)


def init_ray(cfg: DistributedTrainConfig) -> None:
    """Join the cluster (``ray.address`` or ``RAY_ADDRESS``) or start an embedded local Ray."""
    os.environ.update({k: os.environ.get(k, v) for k, v in RUNTIME_ENV_VARS.items()})
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {**cfg.ray.runtime_env}
    runtime_env["env_vars"] = {**RUNTIME_ENV_VARS, **runtime_env.get("env_vars", {})}
    if address:
        # Under `ray job submit` Ray merges this with the job's runtime env and refuses any
        # env var named in both, so only add the ones the job does not set.
        job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env", {})
        job_vars = job_env.get("env_vars", {}) or {}
        runtime_env["env_vars"] = {k: v for k, v in runtime_env["env_vars"].items() if k not in job_vars}
        if not runtime_env["env_vars"]:
            del runtime_env["env_vars"]
        ray.init(address=address, runtime_env=runtime_env or None)
        return
    worker_cpus = cfg.scaling.num_workers * cfg.scaling.resources_per_worker.get("CPU", 1.0)
    # Leave CPUs beyond the workers' for Ray Data: with none free, reading stalls forever.
    num_cpus = cfg.ray.num_cpus or max(os.cpu_count() or 1, int(worker_cpus) + 2)
    start_local_ray(num_cpus, cfg.data_pipeline.object_store_memory, runtime_env)


def start_local_ray(num_cpus: int, object_store_memory: int | None = None,
                    runtime_env: dict[str, Any] | None = None) -> None:
    """A private embedded Ray (never some other instance that happens to run on this machine)."""
    # The dashboard (on 127.0.0.1) backs the state API that Ray Train's cleanup and Tune rely on;
    # a free port, since another Ray on this machine may hold the default 8265.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dashboard_port = probe.getsockname()[1]
    ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
             runtime_env=runtime_env, dashboard_port=dashboard_port)
    # The state API (used by Train's placement-group cleanup when a Tune trial is stopped)
    # finds the cluster through /tmp/ray/ray_current_cluster, which `ray start` writes but an
    # embedded instance does not: a stale file there leaks the stopped trial's CPUs.
    ray._private.utils.write_ray_address(ray.get_runtime_context().gcs_address)


def _ordered_execution() -> ray.data.ExecutionOptions:
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def steps_per_epoch(cfg: DistributedTrainConfig, train_pairs: int) -> int:
    workers = cfg.scaling.num_workers
    steps = (train_pairs // workers // cfg.train.micro_batch_size) // cfg.train.accumulation_steps(workers)
    if steps == 0:
        raise ValueError(f"{train_pairs} training pairs make no full step of global_batch_size="
                         f"{cfg.train.global_batch_size} over {workers} workers")
    return steps


def run(cfg: DistributedTrainConfig, callbacks: list[UserCallback] | tuple = ()) -> dict[str, Any]:
    """The whole job: preprocess, fit, export. Returns paths, data stats and the final metrics.

    ``callbacks`` are extra Ray Train callbacks (a sweep passes Tune's report callback).
    """
    started = time.time()
    output_dir = Path(cfg.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if cfg.deepspeed.zero_stage == 3 and (cfg.model.lora.enabled or (
            cfg.loss.type.needs_reference_model and cfg.loss.precompute_reference)):
        raise ValueError("ZeRO-3 supports neither LoRA nor precomputed DPO references here; use zero_stage<=2")
    init_ray(cfg)
    model_path = resolve_model_path(cfg.model, output_dir)
    tokenizer = load_tokenizer(model_path, cfg.model)
    del tokenizer  # loaded here only to fail early, before any worker starts
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
    config = {"cfg": to_dict(cfg), "model_path": model_path, "has_eval": "eval" in datasets,
              "steps_per_epoch": steps_per_epoch(cfg, stats["train_pairs"])}
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


def run_info(cfg: DistributedTrainConfig, export_dir: Path, wall_s: float, tokens: float) -> dict[str, Any]:
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
        "loss": {"type": cfg.loss.type.value, "lam": cfg.loss.lam, "beta": cfg.loss.beta,
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (defaults when omitted)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. deepspeed.zero_stage=3")
    args = parser.parse_args(argv)
    return run(load_config(DistributedTrainConfig, args.config, args.overrides))


if __name__ == "__main__":
    main()
