"""Faults injected into real stages: the driver is SIGKILLed mid-stage, then the stage is rerun.

Nothing may be lost (counts add up: read = accepted + rejected, every prompt answered once) and
nothing duplicated. The kill is deterministic: a wrapper around the stage's own work function
SIGKILLs the driver right after the first piece of work is done, so no timing decides whether
the fault lands mid-stage.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from orpo.synthetic import make_preference_records

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

PRELUDE = """
import json, os, signal, sys
from pathlib import Path
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
DRIVER = os.getpid()
"""


def _run(script: str, budget_s: int = 900, prelude: str = PRELUDE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=budget_s, check=False)


def test_driver_killed_mid_tokenization_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_model_dir):
    source = tmp_path / "pairs.jsonl"
    rows = [json.dumps(r) for r in make_preference_records(300, seed=11)] + ["null", "{broken"]
    source.write_text("\n".join(rows) + "\n")
    call = f"""
from orpo.trainer_config import DataConfig
from pipelines import data as dp
from pipelines.config import DataPipelineSettings
cfg = DataConfig(source={str(source)!r}, eval_fraction=0.2, max_length=256, max_prompt_length=128)
settings = DataPipelineSettings(tokenize_batch_size=16, rows_per_file=16)
"""
    killed = _run(call + f"""
original = dp.tokenize_batch
def tokenize_then_kill(batch, **kwargs):
    out = original(batch, **kwargs)
    os.kill(DRIVER, signal.SIGKILL)  # the driver dies after the first batch is tokenized
    return out
dp.tokenize_batch = tokenize_then_kill
dp.preprocess(cfg, settings, {str(tiny_model_dir)!r}, False, Path({str(tmp_path / 'run')!r}))
print("NOT KILLED")
""")
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert not (tmp_path / "run" / "data_stats.json").exists()

    rerun = _run(call + f"""
stats = dp.preprocess(cfg, settings, {str(tiny_model_dir)!r}, False, Path({str(tmp_path / 'run')!r}))
rows = [(r["source"], r["index"]) for split in ("train", "eval")
        for r in dp.split_dataset(Path({str(tmp_path / 'run')!r}), split, 0).iter_rows()]
print(json.dumps({{"stats": stats, "rows": rows}}))
""")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (result["stats"]["read"], result["stats"]["accepted"], result["stats"]["rejected"]) == (302, 300, 2)
    assert len(result["rows"]) == len(set(map(tuple, result["rows"]))) == 300  # each pair exactly once
    rejects = (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["index"] for r in rejects) == [300, 301]


def test_driver_killed_mid_generation_then_rerun_answers_every_prompt_once(tmp_path, tiny_model_dir):
    prompts = tmp_path / "ifeval.jsonl"
    prompts.write_text("".join(json.dumps({"key": 100 + i, "prompt": f"Write about the number {i}.",
                                           "instruction_id_list": [], "kwargs": []}) + "\n" for i in range(12)))
    call = f"""
from orpo.config import load_config
from pipelines import generate as gen
from pipelines.config import Config
from pipelines.generation import benchmark_run
cfg = load_config(Config, None, ["model.name_or_path={tiny_model_dir}", "output_dir={tmp_path / 'gen'}",
                                 "generation.benchmarks=[ifeval]", "generation.ifeval.data_path={prompts}",
                                 "generation.ifeval.decoding.max_new_tokens=4", "generation.hf.batch_size=4"])
"""
    killed = _run(call + """
original = benchmark_run.BenchmarkRun.receive
answered = []
def receive_then_kill(self, request, text):
    original(self, request, text)
    answered.append(1)
    if len(answered) == 5:
        os.kill(DRIVER, signal.SIGKILL)  # the driver dies with 5 of 12 answers written
benchmark_run.BenchmarkRun.receive = receive_then_kill
gen.generate(cfg)
print("NOT KILLED")
""")
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    partial = (tmp_path / "gen" / "ifeval.jsonl").read_text().splitlines()
    assert 0 < len(partial) < 12

    rerun = _run(call + """
gen.generate(cfg)
""")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "gen" / "ifeval.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in records) == list(range(100, 112))  # every prompt, exactly once
    runs = json.loads((tmp_path / "gen" / "ifeval.meta.json").read_text())["runs"]
    assert runs[-1]["reused"] == len(partial) and runs[-1]["generated"] == 12 - len(partial)


def test_driver_killed_mid_training_then_rerun_resumes_and_writes_each_step_once(tmp_path, tiny_model_dir):
    """The rerun of the same command resumes from the last checkpoint the workers persisted, and
    metrics.jsonl ends with every step once: rows the killed attempt wrote after that checkpoint
    are replaced, and rows it never wrote (the checkpoint's own) are reported again from the
    checkpoint."""
    out = tmp_path / "train"
    call = f"""
import os, signal
from pathlib import Path
from ray.train.v2.api.callback import UserCallback
from orpo.config import load_config
from pipelines import train as tr
from pipelines.config import Config
cfg = load_config(Config, "configs/tiny_cpu.yaml", [
    "output_dir={out}", "model.name_or_path={tiny_model_dir}", "data.synthetic_size=400",
    "loop.max_steps=8", "loop.save_steps=3", "loop.logging_steps=1", "loop.eval_steps=null",
    "loop.eval_at_start=false"])
"""
    killed = _run(call + """
class KillTheDriverAt(UserCallback):
    # Runs on the Ray Train controller after metrics.jsonl took the row: the driver dies there.
    def __init__(self, driver):
        self.driver = driver
    def after_report(self, run_context, metrics, checkpoint):
        if metrics[0].get("step") == 5:
            os.kill(self.driver, signal.SIGKILL)
tr.run(cfg, callbacks=[KillTheDriverAt(os.getpid())])
print("NOT KILLED")
""", prelude="")
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 5 and not (out / "export").exists()

    rerun = _run(call + f"""
class RecordCheckpoints(UserCallback):
    def after_report(self, run_context, metrics, checkpoint):
        if checkpoint is not None:
            with open({str(tmp_path / "rerun_checkpoints.txt")!r}, "a") as f:
                f.write(str(metrics[0].get("step")) + "\\n")
tr.run(cfg, callbacks=[RecordCheckpoints()])
""", prelude="")
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    # Resumed, not retrained: a run from scratch checkpoints at step 3 first. (Which checkpoint it
    # resumes from, 3 or 6, depends on whether the workers had persisted step 6's before the
    # driver died; either way the rows since the previous checkpoint are reported again.)
    first_checkpoint = int((tmp_path / "rerun_checkpoints.txt").read_text().split()[0])
    assert first_checkpoint in (6, 8)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # each step once, none lost, none repeated
    assert (out / "export" / "model.safetensors").exists()
