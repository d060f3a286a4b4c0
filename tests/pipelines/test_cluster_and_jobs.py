"""The same job on a simulated two-node cluster, and through a real `ray job submit`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from orpo.config import load_config
from pipelines.config import Config
from pipelines.train import run
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_two_node_cluster_places_workers_on_both_nodes(tmp_path, tiny_model_dir):
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address)
        cfg = load_config(Config, "configs/tiny_cpu.yaml", [
            f"output_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}", "data.synthetic_size=200",
            "loop.max_steps=3", "loop.eval_steps=null", "scaling.placement_strategy=STRICT_SPREAD",
            "deepspeed.zero_stage=3"])
        result = run(cfg)
        workers = list_actors(address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")], detail=True)
        assert len({w.node_id for w in workers}) == 2
        assert (result["export_dir"] / "model.safetensors").exists()
    finally:
        ray.shutdown()
        cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_the_training_entry_point(tmp_path):
    """Start a local head (stopped by its own PID, never `ray stop`) and submit the job to it."""
    gcs_port, dashboard_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs_port}", f"--dashboard-port={dashboard_port}",
         "--dashboard-host=127.0.0.1", "--num-cpus=4", "--include-dashboard=true"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard_port}"
        deadline = time.time() + 120
        while subprocess.run([ray_bin, "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            assert time.time() < deadline, "the local head did not come up"
            time.sleep(2)
        out = tmp_path / "job"
        command = [ray_bin, "job", "submit", "--address", address, "--working-dir", str(REPO_ROOT), "--",
                   "python", "-m", "pipelines.train", "--config", "configs/tiny_cpu.yaml", f"output_dir={out}",
                   "data.synthetic_size=200", "loop.max_steps=4", "loop.eval_steps=null"]
        for _ in range(30):
            submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            # The job API answers before its agent is up; the head says so and asks to retry.
            if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
                break
            time.sleep(2)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert f"model exported to {out / 'export'}" in submitted.stdout
        steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == 4
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
