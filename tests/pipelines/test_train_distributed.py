"""Ray Train + DeepSpeed: ZeRO stages agree, a killed worker resumes, the export reloads, two nodes."""

import json
import os
import signal
from pathlib import Path

import pytest
import ray
import torch
from ray.train.v2.api.callback import UserCallback
from transformers import AutoModelForCausalLM

from orpo.config import load_config
from pipelines.config import Config
from pipelines.ray_runtime import start_local_ray
from pipelines.train import run

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for the module: 2 workers x 1 CPU plus 2 CPUs for Ray Data."""
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.1"
    start_local_ray(4, runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenized")


def _cfg(out, model_dir, data_dir, *overrides):
    return load_config(Config, "configs/tiny_cpu.yaml", [
        f"output_dir={out}", f"model.name_or_path={model_dir}", f"data_pipeline.data_dir={data_dir}",
        "data.synthetic_size=400", "loop.logging_steps=1", "loop.eval_steps=null", "loop.eval_at_start=false",
        *overrides])


def _losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_zero_stages_match_and_export_reloads(tmp_path, tiny_model_dir, data_dir, shared_ray):
    """ZeRO 2 and 3 follow ZeRO 0's loss trajectory, and so does ZeRO 0 with padded batches.

    Same data (one tokenized dir), same init, fp32: the stages differ only in how gradients are
    reduced (all-reduce vs reduce-scatter, bucketed) and so in float summation order, ~1e-7
    relative per step; AdamW and 8 steps amplify that to well under 1e-4 relative.
    ``loop.packing=true`` packs the tiny Llama (no padding); ``false`` pads the same pairs.
    """
    trajectories = {}
    for stage in (0, 2, 3, "0-padded"):
        out = tmp_path / f"zero{stage}"
        run(_cfg(out, tiny_model_dir, data_dir, f"deepspeed.zero_stage={str(stage)[0]}", "loop.max_steps=8",
                 "loop.save_steps=null", f"loop.packing={'false' if stage == '0-padded' else 'true'}"))
        trajectories[stage] = _losses(out)
        padding = [r["padding_fraction"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                   if "padding_fraction" in r]
        assert (min(padding) > 0) if stage == "0-padded" else (max(padding) == 0.0), (stage, padding)
    assert len(trajectories[0]) == 8
    for stage in (2, 3, "0-padded"):
        torch.testing.assert_close(torch.tensor(trajectories[stage]), torch.tensor(trajectories[0]),
                                   rtol=1e-4, atol=0)
    assert trajectories[0][-1] < trajectories[0][0]  # it trains

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "export")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), base.parameters()))
    generated = model.generate(torch.tensor([[1, 4, 204]]), max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, 9)


class KillAWorkerAt(UserCallback):
    """On the Ray Train controller: SIGKILL one worker process when ``step`` is reported, once.

    A callback rather than a thread polling metrics.jsonl: a report waits until the controller
    has taken it, and the controller runs this before taking the next one, so the workers are at
    most a step further on when the kill lands, however fast or slow the machine is. (A polling
    thread could see step 6 only after step 12 and kill nothing.)
    """

    def __init__(self, step: int, gcs_address: str, reported: Path):
        self.step, self.gcs_address, self.killed_pid, self.reported = step, gcs_address, None, reported

    def after_report(self, run_context, metrics, checkpoint) -> None:
        with self.reported.open("a") as f:  # every report the controller took, repeats included
            f.write(f"{metrics[0].get('step', 0)} {int(checkpoint is not None)}\n")
        if self.killed_pid is not None or metrics[0].get("step", 0) < self.step:
            return
        from ray.util.state import list_actors

        workers = list_actors(address=self.gcs_address, timeout=300,
                              filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        self.killed_pid = workers[-1].pid
        os.kill(self.killed_pid, signal.SIGKILL)


def test_killed_worker_resumes_from_checkpoint(tmp_path, tiny_model_dir, data_dir, shared_ray):
    out = tmp_path / "killed"
    reported = tmp_path / "reported_steps.txt"
    run(_cfg(out, tiny_model_dir, data_dir, "loop.max_steps=12", "loop.save_steps=4", "checkpoint.max_failures=2"),
        callbacks=[KillAWorkerAt(6, ray.get_runtime_context().gcs_address, reported)])
    # The restart resumed from the last checkpoint (4 or 8), not from step 0: it first reports
    # again the rows up to that checkpoint (without one), and its first checkpoint is the next.
    seen = [tuple(map(int, line.split())) for line in reported.read_text().splitlines()]
    restart = next(i for i in range(1, len(seen)) if seen[i][0] <= seen[i - 1][0])
    assert seen[restart][0] in (1, 5) and seen[-1][0] == 12
    assert next(step for step, has in seen[restart:] if has) in (8, 12)
    # ... and metrics.jsonl holds each step once, the resumed attempt's rows replacing the old.
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    assert (out / "export" / "model.safetensors").exists()


def test_resume_from_starts_a_new_job_at_the_checkpointed_step(tmp_path, tiny_model_dir, data_dir, shared_ray):
    first = tmp_path / "first"
    run(_cfg(first, tiny_model_dir, data_dir, "loop.max_steps=4", "loop.save_steps=4"))
    checkpoints = [p for p in (first / "ray").glob("*/checkpoint_*") if p.is_dir() and not (p / "export").exists()]
    assert len(checkpoints) == 1
    second = tmp_path / "second"
    run(_cfg(second, tiny_model_dir, data_dir, "loop.max_steps=6", f"checkpoint.resume_from={checkpoints[0]}"))
    steps = [json.loads(x)["step"] for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 6]
