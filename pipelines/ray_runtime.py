"""Reaching Ray, the same way for every stage: the configured cluster, ``RAY_ADDRESS`` (as under
``ray job submit``), or a private embedded instance (never some other Ray on this machine)."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import ray

from pipelines.config import Config

# ray.train.report blocks ~2 s by default while the controller polls; 0.1 s keeps reports cheap.
RUNTIME_ENV_VARS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "TOKENIZERS_PARALLELISM": "false"}


def init_ray(cfg: Config) -> None:
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
    start_local_ray(num_cpus, cfg.ray.object_store_memory, runtime_env)


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
