"""One measured variant per process: ``python bench/distributed_workers.py SPEC.json OUT.json``.

Each variant starts its own Ray (``ray.init(address="local", num_cpus=...)``), measures, and
stops only that Ray with ``ray.shutdown()``. Variants (``spec["kind"]``):

- ``prep``: tokenize the synthetic training set once into the shared ``data_dir``.
- ``train``: ``pipelines.train.run(cfg)`` on the shared, pre-tokenized ``data_dir``. A thread
  in this driver follows ``metrics.jsonl`` and the Ray Train worker processes (found among this
  process's descendants by their ``RayTrainWorker`` process title) and reads their CPU time
  and kernel RSS high-water mark (``/proc/PID/status`` VmHWM, reset through
  ``/proc/PID/clear_refs`` when steady state begins).
- ``ray_tok``: ``pipelines.data.preprocess`` of a JSONL file (read + tokenize + write Parquet).
- ``hf_tok``: ``datasets.load_dataset("json")`` + ``.map(batched=True)`` with
  ``orpo.data.tokenize_records`` + ``to_parquet``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Set before Ray is imported anywhere: reports cost ~2 s each at the default interval.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MiB = 1024 * 1024
WORKER_TITLE = "RayTrainWorker"


# ---------------------------------------------------------------------------------------------
# Machine and process-tree accounting
# ---------------------------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU-seconds the whole machine spent busy (all cores, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: psutil.Process) -> dict[int, float]:
    """CPU-seconds (user + system) of ``root`` and of each live descendant, by pid; ``-1`` holds
    what ``root`` collected from its reaped children (e.g. ``datasets``' pool processes)."""
    out: dict[int, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
            if proc.pid == root.pid:
                out[-1] = t.children_user + t.children_system
        except psutil.Error:
            pass
    return out


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class Snapshot:
    """Wall clock, machine busy time and this process tree's CPU time (by pid) at one instant."""

    def __init__(self, root: psutil.Process):
        self.wall = time.perf_counter()
        self.machine = machine_busy_s()
        self.tree = tree_cpu(root)

    def since(self, start: Snapshot) -> dict[str, float]:
        """Deltas from ``start``. Our CPU counts the processes alive now (a process born since
        counts in full); one that exited in between loses its share, which then shows as others'."""
        wall = self.wall - start.wall
        tree = sum(cpu - start.tree.get(pid, 0.0) for pid, cpu in self.tree.items())
        machine = self.machine - start.machine
        return {"wall_s": wall, "tree_cpu_s": tree, "machine_busy_s": machine,
                "others_cores": max(machine - tree, 0.0) / wall if wall > 0 else float("nan")}


class TrainMonitor(threading.Thread):
    """Follows ``metrics.jsonl`` and the RayTrainWorker processes of this driver.

    At the report for step ``reset_step`` (end of the first logging window) it reads each
    worker's lifetime VmHWM and CPU time, then resets VmHWM (``clear_refs``); at the report for
    ``read_step`` it reads VmHWM and CPU time again: the peak and CPU use over steady training
    only (the final report carries a checkpoint save, so ``read_step`` precedes it).
    """

    def __init__(self, metrics_path: Path, n_workers: int, reset_step: int, read_step: int,
                 interval: float = 0.1, scan_every: int = 5):
        super().__init__(daemon=True)
        self.metrics_path, self.reset_step, self.read_step = metrics_path, reset_step, read_step
        self.n_workers, self.interval, self.scan_every = n_workers, interval, scan_every
        self._metrics_size = -1
        self.root = psutil.Process()
        self.stop_event = threading.Event()
        self.rows: list[dict[str, Any]] = []  # metrics rows with the driver time they appeared
        self.workers: dict[int, dict[str, Any]] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.error: str | None = None

    def run(self) -> None:
        try:
            tick = 0
            while not self.stop_event.wait(self.interval):
                # Walking the process tree reads all of /proc: do it only until the workers are
                # found, and sample the known workers' status every few ticks.
                if len(self.workers) < self.n_workers or tick % self.scan_every == 0:
                    self._scan_workers(find_new=len(self.workers) < self.n_workers)
                self._read_metrics()
                tick += 1
        except Exception as error:  # noqa: BLE001  (reported, never silently dropped)
            self.error = repr(error)

    def _scan_workers(self, find_new: bool) -> None:
        procs = self.root.children(recursive=True) if find_new else [w["proc"] for w in self.workers.values()]
        for proc in procs:
            try:
                if proc.pid not in self.workers:
                    if WORKER_TITLE not in " ".join(proc.cmdline()):
                        continue
                    env = proc.environ()
                    self.workers[proc.pid] = {
                        "pid": proc.pid, "proc": proc, "max_rss_sampled_mib": 0.0,
                        "seen_t": time.perf_counter(),
                        "omp_num_threads": env.get("OMP_NUM_THREADS"),
                        "mkl_num_threads": env.get("MKL_NUM_THREADS")}
                info = self.workers[proc.pid]
                rss = _status_kib(proc.pid, "VmRSS") / 1024
                info["max_rss_sampled_mib"] = max(info["max_rss_sampled_mib"], rss)
                info["last_hwm_mib"] = _status_kib(proc.pid, "VmHWM") / 1024
            except (psutil.Error, OSError, RuntimeError):
                pass

    def _read_metrics(self) -> None:
        try:
            size = self.metrics_path.stat().st_size
        except FileNotFoundError:
            return
        if size == self._metrics_size:
            return
        self._metrics_size = size
        lines = self.metrics_path.read_text().splitlines()
        for line in lines[len(self.rows):]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                self._metrics_size = -1
                break  # a partly written line: read it next time
            row["_driver_t"] = time.perf_counter()
            self.rows.append(row)
            step = int(row.get("step", -1))
            if step == self.reset_step:
                self._mark("reset", reset=True)
            elif step == self.read_step:
                self._mark("read", reset=False)

    def _mark(self, name: str, reset: bool) -> None:
        self.snapshots[name] = Snapshot(self.root)
        for info in self.workers.values():
            pid = info["pid"]
            try:
                info[f"{name}_hwm_mib"] = _status_kib(pid, "VmHWM") / 1024
                info[f"{name}_rss_mib"] = _status_kib(pid, "VmRSS") / 1024
                t = info["proc"].cpu_times()
                info[f"{name}_cpu_s"] = t.user + t.system
                info[f"{name}_thread_cpu"] = {t.id: t.user_time + t.system_time for t in info["proc"].threads()}
                if reset:
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
                    info["hwm_reset"] = True
            except (psutil.Error, OSError, RuntimeError) as error:
                info[f"{name}_error"] = repr(error)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        self._metrics_size = -1
        self._read_metrics()

    def worker_report(self) -> list[dict[str, Any]]:
        """Per worker: peaks, CPU time, and how many threads did the steady window's compute
        (threads that used at least 20% as much CPU as the busiest one)."""
        out = []
        for info in self.workers.values():
            row = {k: v for k, v in info.items() if k != "proc" and not k.endswith("_thread_cpu")}
            before, after = info.get("reset_thread_cpu"), info.get("read_thread_cpu")
            if before and after:
                deltas = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
                row["busy_threads"] = sum(d >= 0.2 * deltas[0] for d in deltas) if deltas[0] > 0 else 0
                row["thread_cpu_top"] = [round(d, 2) for d in deltas[:4]]
            out.append(row)
        return out


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_init(num_cpus: int) -> float:
    """A private local Ray with the pipeline's runtime env; returns the seconds it took.

    Ray Train's PlacementGroupCleaner asks the state API whether the controller is alive, and
    without an address the state API goes to the machine-wide ``/tmp/ray/ray_current_cluster``
    (``pipelines.ray_runtime.init_ray`` rewrites that file). Pointed at a dead or foreign cluster,
    every fit ended with a 12 s stall here. So the dashboard gets a known port and the
    workers' ``RAY_API_SERVER_ADDRESS`` names it: this Ray's state API, no shared file touched.
    """
    import ray
    from ray._private.services import get_localhost_ip

    from pipelines.ray_runtime import RUNTIME_ENV_VARS

    port = _free_port()
    host = get_localhost_ip()
    env_vars = {**RUNTIME_ENV_VARS, "RAY_API_SERVER_ADDRESS": f"http://{host}:{port}"}
    os.environ["RAY_API_SERVER_ADDRESS"] = env_vars["RAY_API_SERVER_ADDRESS"]  # this driver's state API too
    start = time.perf_counter()
    for attempt in range(3):  # Ray gives its raylet a fixed 30 s to start, too short under heavy neighbour load
        try:
            ray.init(address="local", num_cpus=num_cpus, runtime_env={"env_vars": env_vars}, dashboard_host=host,
                     dashboard_port=port, logging_level="WARNING", log_to_driver=False)
            break
        except Exception as error:
            if "timed out during startup" not in str(error) or attempt == 2:
                raise
            ray.shutdown()
    return time.perf_counter() - start


def _train_config(spec: dict[str, Any], overrides: list[str]) -> Any:
    from orpo.config import load_config
    from pipelines.config import Config

    base = [f"model.name_or_path={spec['model_dir']}", f"data.max_length={spec['max_length']}",
            f"data.max_prompt_length={spec['max_prompt_length']}", "data.eval_fraction=0.0",
            f"data.synthetic_size={spec['train_records']}", f"data_pipeline.data_dir={spec['data_dir']}",
            f"ray.num_cpus={spec['num_cpus']}"]
    return load_config(Config, REPO / "configs" / "tiny_cpu.yaml", base + overrides)


def run_prep(spec: dict[str, Any]) -> dict[str, Any]:
    """Tokenize the training set once into the shared data dir (the training runs reuse it)."""
    import ray

    from pipelines import data as data_pipeline

    cfg = _train_config(spec, [f"output_dir={spec['out_dir']}"])
    _ray_init(spec["num_cpus"])
    try:
        start = time.perf_counter()
        stats = data_pipeline.preprocess(cfg.data, cfg.data_pipeline, spec["model_dir"], False,
                                         Path(spec["data_dir"]))
        return {"stats": stats, "seconds": time.perf_counter() - start}
    finally:
        ray.shutdown()


def run_train(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``pipelines.train.run`` with the monitor thread following workers and metrics."""
    import ray

    from pipelines.train import run

    steps, log = spec["steps"], spec["logging_steps"]
    out_dir = Path(spec["out_dir"])
    cfg = _train_config(spec, [
        f"output_dir={out_dir}", f"scaling.num_workers={spec['num_workers']}",
        f"scaling.resources_per_worker={{CPU: {spec['cpus_per_worker']}}}",
        f"deepspeed.zero_stage={spec['zero_stage']}", f"loop.max_steps={steps}", f"loop.logging_steps={log}",
        "loop.save_steps=null", "loop.eval_steps=null", "loop.eval_at_start=false", "checkpoint.max_failures=0",
        "checkpoint.num_to_keep=1", f"loop.global_batch_size={spec['global_batch']}",
        f"loop.micro_batch_size={spec['micro_batch']}"])
    ray_start_s = _ray_init(spec["num_cpus"])
    monitor = TrainMonitor(out_dir / "metrics.jsonl", spec["num_workers"], reset_step=log, read_step=steps - log)
    monitor.start()
    start = time.perf_counter()
    try:
        run(cfg)
    finally:
        fit_s = time.perf_counter() - start
        monitor.stop()
        ray.shutdown()
    rows = [{k: v for k, v in row.items() if k in ("step", "tokens_per_s", "tokens_seen", "loss", "_driver_t")}
            for row in monitor.rows if "tokens_per_s" in row]
    snaps = monitor.snapshots
    steady = snaps["read"].since(snaps["reset"]) if {"reset", "read"} <= set(snaps) else None
    workers = monitor.worker_report()
    first_row_t = rows[0]["_driver_t"] if rows else float("nan")
    phases = {"ray_init_s": ray_start_s,
              "to_workers_s": min((w["seen_t"] for w in workers), default=float("nan")) - start,
              "to_first_report_s": first_row_t - start,
              "after_last_report_s": start + fit_s - rows[-1]["_driver_t"] if rows else float("nan")}
    return {"rows": rows, "workers": workers, "steady_window": steady, "phases": phases,
            "ray_start_s": ray_start_s, "run_s": fit_s, "monitor_error": monitor.error,
            "loadavg_end": os.getloadavg()}


def _write_jsonl_records(spec: dict[str, Any]) -> None:
    from orpo.synthetic import make_preference_records, write_jsonl

    path = Path(spec["jsonl"])
    if not path.exists():
        write_jsonl(path, make_preference_records(spec["tok_records"], spec["seed"]))


def run_ray_tok(spec: dict[str, Any]) -> dict[str, Any]:
    """``pipelines.data.preprocess`` on the JSONL file: read + tokenize + Parquet + stats pass."""
    import ray

    from orpo.config import from_dict
    from orpo.trainer_config import DataConfig
    from pipelines import data as data_pipeline
    from pipelines.config import DataPipelineSettings

    cfg = from_dict(DataConfig, {"source": spec["jsonl"], "max_length": spec["max_length"],
                                 "max_prompt_length": spec["max_prompt_length"], "eval_fraction": 0.05})
    pipeline = from_dict(DataPipelineSettings, {"tokenize_num_cpus": 1.0})
    ray_start_s = _ray_init(spec["cpus"])
    root = psutil.Process()
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        warm = time.perf_counter()
        ray.data.range(spec["cpus"] * 4, override_num_blocks=spec["cpus"] * 4).map_batches(
            lambda b: b, batch_size=1).materialize()  # start the CPU workers: excluded like ray.init
        warm_s = time.perf_counter() - warm
        idle_start = Snapshot(root)
        time.sleep(5.0)  # what Ray's own daemons burn while no work runs: a cost per wall second, not per record
        idle = Snapshot(root).since(idle_start)
        before = Snapshot(root)
        stats = data_pipeline.preprocess(cfg, pipeline, spec["model_dir"], False, Path(spec["out_dir"]))
        window = Snapshot(root).since(before)
    finally:
        ray.shutdown()
    return {"records": stats["read"], "accepted": stats["accepted"], "ray_start_s": ray_start_s,
            "worker_warmup_s": warm_s, "ray_idle_cores": idle["tree_cpu_s"] / idle["wall_s"], **window}


def _hf_tokenize_fn(model_dir: str, max_length: int, max_prompt_length: int):
    from orpo.data import TokenizeSpec, tokenize_records
    from orpo.modeling import load_tokenizer
    from orpo.trainer_config import ModelConfig

    tokenizer = load_tokenizer(model_dir, ModelConfig())
    tok_spec = TokenizeSpec(max_length=max_length, max_prompt_length=max_prompt_length)
    columns = ["index", "prompt_ids", "chosen_ids", "rejected_ids", "length", "truncated"]

    def tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        keys = list(batch)
        records = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        out = tokenize_records(records, tokenizer, tok_spec, indices=indices, collect_rejects=True)
        return {c: [ex[c] for ex in out.examples] for c in columns}

    return tokenize


def run_hf_tok(spec: dict[str, Any]) -> dict[str, Any]:
    """``datasets.load_dataset("json")`` + batched ``.map`` (the same tokenize logic) + ``to_parquet``."""
    import datasets

    datasets.disable_progress_bars()
    out_dir = Path(spec["out_dir"])
    root = psutil.Process()
    before = Snapshot(root)
    start = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=spec["jsonl"], split="train", cache_dir=str(out_dir / "cache"))
    load_s = time.perf_counter() - start
    fn = _hf_tokenize_fn(spec["model_dir"], spec["max_length"], spec["max_prompt_length"])
    tokenized = ds.map(fn, batched=True, batch_size=spec["batch_size"], with_indices=True,
                       num_proc=spec["cpus"] if spec["cpus"] > 1 else None, remove_columns=ds.column_names)
    map_s = time.perf_counter() - start - load_s
    tokenized.to_parquet(str(out_dir / "tokenized.parquet"))
    window = Snapshot(root).since(before)
    return {"records": len(ds), "accepted": len(tokenized), "load_s": load_s, "map_s": map_s, **window}


VARIANTS = {"prep": run_prep, "train": run_train, "ray_tok": run_ray_tok, "hf_tok": run_hf_tok}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec["kind"] in ("ray_tok", "hf_tok"):
        _write_jsonl_records(spec)
    result = VARIANTS[spec["kind"]](spec)
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
