"""The same job on a simulated two-node cluster, and through a real `ray job submit`."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


# `ray start` writes the GCS address to <temp-dir>/ray_current_cluster once the head is up. JobHead.submit_job
# (ray/dashboard/modules/job/job_head.py::_get_head_node_agent_once) takes a job only when the GCS's internal KV
# holds the head node's id (job/head_node_id, put by the dashboard's NodeHead once the head registers) and that
# node's agent address (dashboard/DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX:<id>, put by the agent after its HTTP server
# is listening); otherwise it answers "No available agent" after 10 s. This polls those keys, then prints the
# dashboard's address (dashboard/dashboard), which the dashboard writes once it listens.
_WAIT_FOR_JOB_AGENT = """
import os, sys, time
from ray._private import ray_constants as c
from ray._raylet import GcsClient
from ray.dashboard.consts import DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX

address_file = os.path.join(sys.argv[1], "ray_current_cluster")
while not (os.path.exists(address_file) and open(address_file).read().strip()):
    time.sleep(0.5)
gcs = GcsClient(address=open(address_file).read().strip())

def get(key, namespace):
    try:
        return gcs.internal_kv_get(key, namespace, timeout=30)
    except Exception as e:  # a loaded GCS may miss the RPC deadline: ask again
        print(f"GCS: {e}", file=sys.stderr)
        return None

while True:
    head_id = get(c.KV_HEAD_NODE_ID_KEY, c.KV_NAMESPACE_JOB)
    agent = head_id and get(f"{DASHBOARD_AGENT_ADDR_NODE_ID_PREFIX}{head_id.decode()}".encode(),
                            c.KV_NAMESPACE_DASHBOARD)
    dashboard = get(c.DASHBOARD_ADDRESS.encode(), c.KV_NAMESPACE_DASHBOARD)
    if agent and dashboard:
        print(dashboard.decode())
        break
    time.sleep(0.5)
"""

# Budgets, not expected durations: on an idle machine the agent is up in ~10 s and the job takes ~1 min; these
# hold with both cores busy elsewhere. Each wait polls and returns as soon as its condition holds.
AGENT_BUDGET_S = 600
JOB_BUDGET_S = 1200


def _head_logs(temp_dir: Path, head_output: Path) -> str:
    """The end of `ray start`'s output and of the head's logs that say why a job could not run."""
    logs = temp_dir / "session_latest" / "logs"
    files = [head_output, *(logs / n for n in ("dashboard_agent.log", "dashboard.log", "dashboard_JobHead.log",
                                              "raylet.out", "gcs_server.out")), *sorted(logs.glob("job-driver-*.log"))]
    return "".join(f"\n----- {f} -----\n{f.read_text(errors='replace')[-3000:]}" for f in files if f.exists())


def _stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the head's process group (never `ray stop`, which kills every Ray on the machine), then SIGKILL
    whatever is left once `ray start --block` has had time to stop its children."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # the whole group is gone
            break
        try:
            process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pass
    process.wait()


@pytest.mark.timeout(AGENT_BUDGET_S + JOB_BUDGET_S + 600)
def test_ray_job_submit_runs_the_training_entry_point(tmp_path):
    """Start a local head (stopped by its own process group, never `ray stop`) and submit the job to it.

    The head shares the machine with other Ray instances (other tests, other checkouts), so nothing of it may
    take a fixed, shared resource:
    - the agent's HTTP port defaults to 52365; when another Ray holds it, the agent stays alive without HTTP and
      never registers, and every submission fails with "No available agent". All ports here are bound by the
      components themselves (0) except the Ray client server's, which cannot be 0 and must not be its default
      10001 (when it cannot bind it exits, and `ray start --block` takes the whole head down with it);
    - its own temp dir, so sessions, sockets and `ray_current_cluster` stay out of /tmp/ray (a plain `ray.init()`
      elsewhere would otherwise join this head). Short, under /tmp: Unix socket paths are limited to 107 bytes
      and pytest's tmp_path plus `session_<date>_<pid>/sockets/plasma_store` exceeds that;
    - its own token (RAY_AUTH_TOKEN), so nothing depends on or writes ~/.ray/auth_token.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    head_output = tmp_path / "ray-start.log"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_DASHBOARD_STARTUP_TIMEOUT_S": str(AGENT_BUDGET_S)}
    env.pop("RAY_ADDRESS", None)
    # The job's `python` is this interpreter, as in an activated venv (CI), also when pytest was run by path.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    ray_bin = str(Path(sys.executable).parent / "ray")
    with head_output.open("w") as head_log:
        head = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", f"--temp-dir={temp_dir}", "--port=0", "--dashboard-port=0",
             "--dashboard-host=127.0.0.1", "--dashboard-agent-listen-port=0", f"--ray-client-server-port={_free_port()}",
             "--num-cpus=4", "--include-dashboard=true", "--disable-usage-stats"],
            env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    try:
        waiter = subprocess.Popen([sys.executable, "-c", _WAIT_FOR_JOB_AGENT, str(temp_dir)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + AGENT_BUDGET_S
        while waiter.poll() is None and head.poll() is None and time.monotonic() < deadline:
            try:
                waiter.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        if waiter.poll() is None:
            waiter.kill()
        dashboard, waiter_err = waiter.communicate()
        if waiter.returncode != 0 or not dashboard.strip():
            state = (f"`ray start` exited with {head.returncode}" if head.poll() is not None
                     else f"no job agent registered within {AGENT_BUDGET_S} s")
            pytest.fail(f"{state}; waiter stderr: {waiter_err[-2000:]}{_head_logs(temp_dir, head_output)}")

        print(f"job agent ready {time.monotonic() - started:.0f} s after `ray start`")

        out = tmp_path / "job"
        command = [ray_bin, "job", "submit", "--address", f"http://{dashboard.strip()}", "--working-dir",
                   str(REPO_ROOT), "--", "python", "-m", "pipelines.train", "--config", "configs/tiny_cpu.yaml",
                   f"output_dir={out}", "data.synthetic_size=200", "loop.max_steps=4", "loop.eval_steps=null"]
        try:
            submitted = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                                       timeout=JOB_BUDGET_S)
        except subprocess.TimeoutExpired as e:
            partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
            pytest.fail(f"the job did not finish within {JOB_BUDGET_S} s: {partial[-3000:]}"
                        f"{_head_logs(temp_dir, head_output)}")
        print(f"job finished {time.monotonic() - started:.0f} s after `ray start`")
        assert submitted.returncode == 0, (submitted.stdout[-3000:] + submitted.stderr[-3000:]
                                           + _head_logs(temp_dir, head_output))
        assert f"model exported to {out / 'export'}" in submitted.stdout
        steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == 4
    finally:
        _stop_process_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
