"""Distributed-stage bench: Ray Train + DeepSpeed throughput and memory, Ray Data tokenization.

    python bench/distributed.py [--train-rounds R] [--tok-rounds R] [--quick] [--out results.json]

1. 1 vs 2 Ray Train workers (ZeRO-2, fp32, the same global batch): steady-state real tokens/s
   and wall time per optimiser step, from rank 0's ``metrics.jsonl`` (the first logging window,
   with start-up and the first steps, is skipped).
2. ZeRO 0 / 2 / 3 with 2 workers: step time and each worker's peak RSS.
3. ``pipelines.data.preprocess`` (Ray Data: read + tokenize + write Parquet) on 1 and 2 CPUs
   against ``datasets.load_dataset("json") + .map(batched=True) + to_parquet`` with 1 and 2
   processes, the same ``orpo.data`` tokenization, tokenizer and max lengths.

Every measurement is a fresh process (``bench/distributed_workers.py``) with its own
``ray.init(address="local", num_cpus=...)``, stopped with ``ray.shutdown()`` (never ``ray
stop``). The training runs share one pre-tokenized ``data_pipeline.data_dir``. Variants run in
rounds with their order rotated; the table shows medians over rounds, and ratios are medians
of per-round ratios (each taken between runs of the same round, minutes apart at most).

Memory: each RayTrainWorker process (found among this driver's descendants) is read from
outside: its kernel high-water mark VmHWM is reset through ``/proc/PID/clear_refs`` at the end
of the first logging window and read at the report ``logging_steps`` before the last, so the
"steady" peak covers training steps only (not model load, DeepSpeed init, the final
checkpoint or the export); the lifetime peak (VmHWM read last before exit) covers everything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from common import MiB

from orpo.synthetic import make_preference_records, write_jsonl
from orpo.tiny import build_tiny_model

# name: (workers, CPUs per worker, ZeRO stage)
TRAIN_VARIANTS = {"1w_z2": (1, 1, 2), "2w_z0": (2, 1, 0), "2w_z2": (2, 1, 2), "2w_z3": (2, 1, 3)}
EXTRA_TRAIN_VARIANTS = {"1w2cpu_z2": (1, 2, 2)}
TRAIN_LABELS = {
    "1w_z2": "1 worker x 1 CPU, ZeRO-2",
    "1w2cpu_z2": "1 worker x 2 CPUs, ZeRO-2",
    "2w_z0": "2 workers x 1 CPU, ZeRO-0",
    "2w_z2": "2 workers x 1 CPU, ZeRO-2",
    "2w_z3": "2 workers x 1 CPU, ZeRO-3",
}
TOK_VARIANTS = {"ray_1": ("ray_tok", 1), "ray_2": ("ray_tok", 2), "hf_1": ("hf_tok", 1), "hf_2": ("hf_tok", 2)}
TOK_LABELS = {
    "ray_1": "Ray Data preprocess, num_cpus=1",
    "ray_2": "Ray Data preprocess, num_cpus=2",
    "hf_1": "datasets.map, num_proc=1",
    "hf_2": "datasets.map, num_proc=2",
}


# ratio: (target, judged on). Records per CPU-second compare the work each side does per record;
# the 2-vs-1-CPU scaling can only show on wall time (CPU time per record does not fall with CPUs).
TOK_TARGETS = {"Ray Data / datasets.map records/s, 1 CPU": (1.0, "cpu"),
               "Ray Data / datasets.map records/s, 2 CPUs": (1.0, "cpu"),
               "Ray Data 2 CPUs / 1 CPU records/s": (1.7, "wall")}


@dataclass
class Sizes:
    """Everything that sets the amount of work; printed with the results."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    max_length: int = 256
    max_prompt_length: int = 128
    train_records: int = 600  # 37 steps of 16 pairs: more than a run takes
    global_batch: int = 16
    micro_batch: int = 4
    steps: int = 20
    logging_steps: int = 5
    train_rounds: int = 2
    ray_cpus: int = 4  # logical CPUs of each training Ray: 2 workers x 1 CPU + 2 for Ray Data
    tok_records: int = 20_000
    tok_batch: int = 256
    tok_rounds: int = 2


QUICK = Sizes(hidden=64, layers=2, train_records=200, steps=6, logging_steps=2, train_rounds=1,
              tok_records=2000, tok_rounds=1)
# --quick runs a subset (each Ray start-up costs ~10-40 s here): enough to exercise every code path.
QUICK_TRAIN, QUICK_TOK = ["1w_z2", "2w_z3"], ["ray_2", "hf_2"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rounds", type=int, help="rounds of the training variants (default 2)")
    parser.add_argument("--tok-rounds", type=int, help="rounds of the tokenization variants (default 2)")
    parser.add_argument("--steps", type=int, help="optimiser steps per training run (a multiple of "
                                                   "--logging-steps, at least 3 windows)")
    parser.add_argument("--logging-steps", type=int)
    parser.add_argument("--hidden", type=int, help="model hidden size (default 256)")
    parser.add_argument("--layers", type=int, help="model layers (default 4)")
    parser.add_argument("--tok-records", type=int, help="records in the tokenization set (default 20000)")
    parser.add_argument("--one-worker-two-cpus", action="store_true",
                        help="also train 1 worker with 2 CPUs (Ray then sets OMP_NUM_THREADS=2): the "
                             "single-worker run that uses both cores")
    parser.add_argument("--skip-train", action="store_true", help="only the tokenization section")
    parser.add_argument("--skip-tok", action="store_true", help="only the training sections")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (~3 min): tiny model, few steps, 2k records, one round, 2 training and 2 "
             "tokenization variants; the numbers mean nothing")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, metrics)")
    parser.add_argument("--out", type=Path, help="write every measurement and the summary as JSON")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------
# Running variants
# ---------------------------------------------------------------------------------------------


def _progress(what: str, start: float) -> None:
    print(f"  {what} {time.perf_counter() - start:6.1f}s", file=sys.stderr, flush=True)


def run_variant(name: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One variant in a fresh process; its output goes to ``<workdir>/<name>.log``."""
    spec_path, out_path, log_path = (workdir / f"{name}.spec.json", workdir / f"{name}.out.json",
                                     workdir / f"{name}.log")
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("distributed_workers.py")),
                               str(spec_path), str(out_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                              check=False)
    if proc.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"variant {name} failed (rc {proc.returncode}), log {log_path}:\n{tail}")
    result = json.loads(out_path.read_text())
    result["process_s"] = time.perf_counter() - start
    return result


def prepare(sizes: Sizes, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """The tiny model, the shared pre-tokenized training data and the tokenization JSONL."""
    model_dir = build_tiny_model(workdir / "model", hidden_size=sizes.hidden, num_layers=sizes.layers,
                                 num_heads=sizes.heads, seed=seed)
    config = json.loads((model_dir / "config.json").read_text())
    h, i, v, n_layers = (config["hidden_size"], config["intermediate_size"], config["vocab_size"],
                         config["num_hidden_layers"])
    n_params = 2 * v * h + n_layers * (4 * h * h + 3 * h * i + 2 * h) + h  # untied embeddings, Llama MLP
    base = {"model_dir": str(model_dir), "data_dir": str(workdir / "train_data"),
            "max_length": sizes.max_length, "max_prompt_length": sizes.max_prompt_length, "seed": seed}
    jsonl = write_jsonl(workdir / "tok_records.jsonl", make_preference_records(sizes.tok_records, seed))
    return {"base": base, "n_params": n_params, "vocab": v, "jsonl": str(jsonl)}


def train_spec(prep: dict[str, Any], sizes: Sizes, name: str, workdir: Path, round_index: int) -> dict[str, Any]:
    workers, cpus, zero = {**TRAIN_VARIANTS, **EXTRA_TRAIN_VARIANTS}[name]
    return {**prep["base"], "kind": "train", "out_dir": str(workdir / f"train_{name}_r{round_index}"),
            "num_cpus": sizes.ray_cpus, "train_records": sizes.train_records, "num_workers": workers,
            "cpus_per_worker": cpus, "zero_stage": zero, "steps": sizes.steps,
            "logging_steps": sizes.logging_steps, "global_batch": sizes.global_batch,
            "micro_batch": sizes.micro_batch}


def tok_spec(prep: dict[str, Any], sizes: Sizes, name: str, workdir: Path, round_index: int) -> dict[str, Any]:
    kind, cpus = TOK_VARIANTS[name]
    return {**prep["base"], "kind": kind, "cpus": cpus, "jsonl": prep["jsonl"], "tok_records": sizes.tok_records,
            "batch_size": sizes.tok_batch, "out_dir": str(workdir / f"tok_{name}_r{round_index}")}


def rounds(names: list[str], n_rounds: int, make_spec, workdir: Path, section: str) -> dict[str, list[dict]]:
    """``n_rounds`` rounds of every variant, the order rotated by one each round."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(n_rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runs[name].append(run_variant(f"{section}_{name}_r{r}", make_spec(name, r), workdir))
            _progress(f"{section} round {r + 1}/{n_rounds} {name:<10}", start)
    return runs


# ---------------------------------------------------------------------------------------------
# Reducing runs to numbers
# ---------------------------------------------------------------------------------------------


def steady_windows(run: dict[str, Any]) -> tuple[float, float, int]:
    """Real tokens, seconds and optimiser steps of the logging windows after the first.

    Rank 0 reports ``tokens_per_s`` (all ranks' real tokens over its window time) and the
    running ``tokens_seen``; a window's tokens are the ``tokens_seen`` delta and its time is
    tokens / ``tokens_per_s``.
    """
    rows = run["rows"]
    tokens = seconds = 0.0
    steps = 0
    for prev, row in itertools.pairwise(rows):
        window_tokens = row["tokens_seen"] - prev["tokens_seen"]
        tokens += window_tokens
        seconds += window_tokens / row["tokens_per_s"]
        steps += row["step"] - prev["step"]
    return tokens, seconds, steps


def train_metrics(run: dict[str, Any]) -> dict[str, Any]:
    tokens, seconds, steps = steady_windows(run)
    workers = sorted(run["workers"], key=lambda w: w["pid"])
    window = run["steady_window"] or {}
    window_steps = run["_window_steps"]
    cpu = [w["read_cpu_s"] - w["reset_cpu_s"] for w in workers if "read_cpu_s" in w and "reset_cpu_s" in w]
    seen = {row["step"]: row["tokens_seen"] for row in run["rows"]}
    reset_step, read_step = run["_cpu_window"]
    window_tokens = seen.get(read_step, float("nan")) - seen.get(reset_step, float("nan"))
    return {
        "tokens_per_s": tokens / seconds,
        "step_s": seconds / steps,
        "tokens_per_cpu_s": window_tokens / sum(cpu) if cpu else float("nan"),
        "steady_peak_mib": [w.get("read_hwm_mib", float("nan")) for w in workers],
        "lifetime_peak_mib": [w.get("last_hwm_mib", float("nan")) for w in workers],
        "worker_cpu_s_per_step": sum(cpu) / window_steps if cpu else float("nan"),
        "cores_per_worker": statistics.mean(cpu) / window["wall_s"] if cpu and window else float("nan"),
        "others_cores": window.get("others_cores", float("nan")),
        "busy_threads": [w.get("busy_threads") for w in workers],
        "omp_env_at_exec": [w.get("omp_num_threads") for w in workers],
        "ray_init_s": run["phases"]["ray_init_s"],
        "to_first_report_s": run["phases"]["to_first_report_s"],
        "process_s": run["process_s"],
        "final_loss": run["rows"][-1]["loss"],
    }


def tok_metrics(run: dict[str, Any]) -> dict[str, Any]:
    # Ray's daemons (raylet, GCS, dashboard) burn CPU per wall second whatever the work; on a loaded
    # machine the wall time stretches and so does that share. "excl. idle" takes it out.
    idle_cpu_s = run.get("ray_idle_cores", 0.0) * run["wall_s"]
    return {"records_per_s": run["records"] / run["wall_s"], "records_per_cpu_s": run["records"] / run["tree_cpu_s"],
            "records_per_cpu_s_excl_idle": run["records"] / (run["tree_cpu_s"] - idle_cpu_s),
            "ray_idle_cores": run.get("ray_idle_cores", float("nan")),
            "wall_s": run["wall_s"],
            "cpu_s": run["tree_cpu_s"], "others_cores": run["others_cores"],
            "ray_init_s": run.get("ray_start_s"), "ray_worker_warmup_s": run.get("worker_warmup_s"),
            "records": run["records"], "accepted": run["accepted"], "process_s": run["process_s"]}


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def summarize(train_runs: dict[str, list[dict]], tok_runs: dict[str, list[dict]], sizes: Sizes) -> dict[str, Any]:
    window_steps = sizes.steps - 2 * sizes.logging_steps
    cpu_window = (sizes.logging_steps, sizes.steps - sizes.logging_steps)
    train = {name: [train_metrics({**run, "_window_steps": window_steps, "_cpu_window": cpu_window})
                    for run in runs]
             for name, runs in train_runs.items()}
    tok = {name: [tok_metrics(run) for run in runs] for name, runs in tok_runs.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, metrics in train.items():
        rows[name] = {key: _median([m[key] for m in metrics]) for key in
                      ("tokens_per_s", "step_s", "tokens_per_cpu_s", "worker_cpu_s_per_step", "cores_per_worker",
                       "others_cores",
                       "ray_init_s", "to_first_report_s", "process_s", "final_loss")}
        n_workers = len(metrics[0]["steady_peak_mib"])
        for key in ("steady_peak_mib", "lifetime_peak_mib"):
            rows[name][key] = [_median([m[key][i] for m in metrics if len(m[key]) > i]) for i in range(n_workers)]
        rows[name]["busy_threads"] = metrics[-1]["busy_threads"]
        rows[name]["omp_env_at_exec"] = metrics[-1]["omp_env_at_exec"]
    for name, metrics in tok.items():
        rows[name] = {key: _median([m[key] for m in metrics]) for key in
                      ("records_per_s", "records_per_cpu_s", "records_per_cpu_s_excl_idle", "ray_idle_cores",
                       "wall_s", "cpu_s", "others_cores", "ray_init_s",
                       "ray_worker_warmup_s",
                       "process_s")}
        rows[name]["accepted"] = metrics[-1]["accepted"]
        rows[name]["records"] = metrics[-1]["records"]

    def ratio(a: str, b: str, key: str, source: dict[str, list[dict]], reduce=lambda x: x) -> float | None:
        if a not in source or b not in source:
            return None
        return _median([reduce(x[key]) / reduce(y[key]) for x, y in zip(source[a], source[b])])

    def both(a: str, b: str, wall_key: str, cpu_key: str | None, source: dict[str, list[dict]]) -> dict | None:
        wall = ratio(a, b, wall_key, source)
        if wall is None:
            return None
        return {"wall": wall, "cpu": ratio(a, b, cpu_key, source) if cpu_key else None}

    # "cpu": the same ratio on CPU time (tokens or records per CPU-second; CPU-seconds per step),
    # which the neighbours' load moves much less than wall time.
    ratios = {
        "2w/1w tokens/s (ZeRO-2)": both("2w_z2", "1w_z2", "tokens_per_s", "tokens_per_cpu_s", train),
        "2w/1w step time (ZeRO-2)": both("2w_z2", "1w_z2", "step_s", "worker_cpu_s_per_step", train),
        "1w x 2 CPUs / 1w x 1 CPU tokens/s": both("1w2cpu_z2", "1w_z2", "tokens_per_s", "tokens_per_cpu_s", train),
        "2w / (1w x 2 CPUs) tokens/s": both("2w_z2", "1w2cpu_z2", "tokens_per_s", "tokens_per_cpu_s", train),
        "ZeRO-2/ZeRO-0 step time": both("2w_z2", "2w_z0", "step_s", "worker_cpu_s_per_step", train),
        "ZeRO-3/ZeRO-0 step time": both("2w_z3", "2w_z0", "step_s", "worker_cpu_s_per_step", train),
        "ZeRO-2/ZeRO-0 steady peak RSS (max worker)": ratio("2w_z2", "2w_z0", "steady_peak_mib", train, max),
        "ZeRO-3/ZeRO-0 steady peak RSS (max worker)": ratio("2w_z3", "2w_z0", "steady_peak_mib", train, max),
        "Ray Data / datasets.map records/s, 1 CPU": both("ray_1", "hf_1", "records_per_s", "records_per_cpu_s", tok),
        "Ray Data / datasets.map records/s, 2 CPUs": both("ray_2", "hf_2", "records_per_s", "records_per_cpu_s", tok),
        "Ray Data / datasets.map rec/CPU-s excl. idle Ray, 1 CPU": both(
            "ray_1", "hf_1", "records_per_cpu_s_excl_idle", "records_per_cpu_s_excl_idle", tok),
        "Ray Data / datasets.map rec/CPU-s excl. idle Ray, 2 CPUs": both(
            "ray_2", "hf_2", "records_per_cpu_s_excl_idle", "records_per_cpu_s_excl_idle", tok),
        "Ray Data 2 CPUs / 1 CPU records/s": both("ray_2", "ray_1", "records_per_s", "records_per_cpu_s", tok),
        "datasets.map 2 procs / 1 proc records/s": both("hf_2", "hf_1", "records_per_s", "records_per_cpu_s", tok),
    }
    ratios = {k: v if isinstance(v, dict) else {"wall": v, "cpu": None}
              for k, v in ratios.items() if v is not None}
    return {"rows": rows, "ratios": ratios,
            "per_run": {"train": train, "tok": tok}}


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------


def _model_state_mib(n_params: int, stage: int, workers: int) -> float:
    """fp32 params + grads + Adam m, v per worker as ZeRO partitions them (DeepSpeed's buffers aside)."""
    p, g, o = 4 * n_params, 4 * n_params, 8 * n_params
    if stage >= 1:
        o /= workers
    if stage >= 2:
        g /= workers
    if stage >= 3:
        p /= workers
    return (p + g + o) / MiB


def _fmt_list(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def render(sizes: Sizes, prep: dict[str, Any], summary: dict[str, Any], quick: bool) -> str:
    rows, ratios = summary["rows"], summary["ratios"]
    n = prep["n_params"]
    out = [
        (f"Distributed bench | {platform.machine()}, {os.cpu_count()} cores | torch {version('torch')}, "
         f"ray {version('ray')}, deepspeed {version('deepspeed')}, datasets {version('datasets')}"),
        (f"model: random-init Llama, hidden {sizes.hidden}, {sizes.layers} layers, vocab {prep['vocab']}, "
         f"{n / 1e6:.2f}M params, fp32, torch AdamW; fp32 param+grad+Adam states per worker (theory): "
         f"ZeRO-0 {_model_state_mib(n, 0, 2):.0f} MiB, ZeRO-2 {_model_state_mib(n, 2, 2):.0f}, "
         f"ZeRO-3 {_model_state_mib(n, 3, 2):.0f} (2 workers)"),
        (f"training: pipelines.train.run, configs/tiny_cpu.yaml, global batch {sizes.global_batch} pairs "
         f"(micro {sizes.micro_batch}, accumulation = global / micro / workers), {sizes.steps} steps, logging "
         f"every {sizes.logging_steps}; ray.init(num_cpus={sizes.ray_cpus}); {sizes.train_records} synthetic "
         f"pairs pre-tokenized once (data_pipeline.data_dir), max_length {sizes.max_length}"),
        (f"timing: steady state = logging windows 2..{sizes.steps // sizes.logging_steps} from rank 0's "
         f"metrics.jsonl; {sizes.train_rounds} training / {sizes.tok_rounds} tokenization rounds, order rotated, "
         "medians; ratios = medians of per-round ratios"),
    ]
    if quick:
        out.append("SMOKE RUN (--quick): tiny model, few steps, one round; the numbers mean nothing")
    out.append("")

    train_names = [n_ for n_ in TRAIN_LABELS if n_ in rows]
    if train_names:
        header = (f"{'1-2. training (fp32 CPU, DeepSpeed)':<34}{'tok/s':>8}{'s/step':>8}{'tok/':>7}{'wkr CPU-s':>10}"
                  f"{'cores/':>7}{'others':>7}{'threads':>8}{'peak RSS MiB/worker':>21}{'lifetime':>11}")
        out.append(header)
        out.append(f"{'':<34}{'':>8}{'':>8}{'CPU-s':>7}{'/step':>10}{'worker':>7}{'cores':>7}{'/worker':>8}"
                   f"{'(steady)':>21}{'peak MiB':>11}")
        for name in train_names:
            row = rows[name]
            threads = "/".join(str(t) for t in row["busy_threads"])
            out.append(f"  {TRAIN_LABELS[name]:<32}{row['tokens_per_s']:>8.0f}{row['step_s']:>8.3f}"
                       f"{row['tokens_per_cpu_s']:>7.0f}"
                       f"{row['worker_cpu_s_per_step']:>10.3f}{row['cores_per_worker']:>7.2f}"
                       f"{row['others_cores']:>7.2f}{threads:>8}{_fmt_list(row['steady_peak_mib']):>21}"
                       f"{_fmt_list(row['lifetime_peak_mib']):>11}")
        first = rows[train_names[0]]
        out.append(f"  start-up per run (median): ray.init {first['ray_init_s']:.1f} s, fit() start to first "
                   f"report {first['to_first_report_s']:.1f} s, whole process {first['process_s']:.0f} s")
        out.append("  threads: Ray sets OMP_NUM_THREADS = floor(CPUs per worker) in each worker (unless already "
                   "set), so torch computes on 1 thread per 1-CPU worker; the column counts the threads that "
                   "used >=20% of the busiest thread's CPU in the steady window")
        out.append("  tok/s: real (non-pad) tokens of all workers per wall second; s/step: wall per optimiser "
                   "step; tok/CPU-s: the same tokens per second of the workers' CPU time; "
                   "wkr CPU-s/step: all workers' CPU time per step; cores/worker: a worker's CPU time "
                   "per wall second; others cores: machine busy time not ours per wall second")
        out.append("")

    tok_names = [n_ for n_ in TOK_LABELS if n_ in rows]
    if tok_names:
        out.append(f"{'3. tokenization':<34}{'records/s':>10}{'rec/CPU-s':>10}{'excl.idle':>10}{'wall s':>8}"
                   f"{'CPU s':>8}{'others':>8}{'ray.init s':>12}{'worker warm-up s':>18}")
        example = rows[tok_names[0]]
        for name in tok_names:
            row = rows[name]
            init, warm = (f"{row[k]:.1f}" if not math.isnan(row[k]) else "-"
                          for k in ("ray_init_s", "ray_worker_warmup_s"))
            out.append(f"  {TOK_LABELS[name]:<32}{row['records_per_s']:>10.0f}{row['records_per_cpu_s']:>10.0f}"
                       f"{row['records_per_cpu_s_excl_idle']:>10.0f}{row['wall_s']:>8.2f}"
                       f"{row['cpu_s']:>8.2f}{row['others_cores']:>8.2f}{init:>12}{warm:>18}")
        out.append(f"  {example['records']} synthetic records in one JSONL file; timed: read + tokenize + write "
                   "Parquet (Ray: also the stats/rejects pass), start-up excluded and shown apart; CPU s: "
                   "this process tree; excl.idle: less Ray's idle daemon CPU (measured for 5 s before the work, "
                   "per wall second) over the wall time")
        out.append("")

    out.append(f"{'ratios (medians of per-round ratios)':<52}{'wall':>8}{'CPU time':>10}  target (issue 12)")
    for name, value in ratios.items():
        cpu = f"{value['cpu']:.2f}" if value["cpu"] is not None else ""
        target = ""
        if name in TOK_TARGETS:
            goal, on = TOK_TARGETS[name]
            target = f"  >= {goal} on {on}: {'PASS' if value[on] >= goal else 'MISS'}"
        out.append(f"  {name:<50}{value['wall']:>8.2f}{cpu:>10}{target}")
    out.append("")
    out.append(f"caveat: {os.cpu_count()} cores shared with other processes ('others cores' above); "
               "2 workers x 1 thread share the same 2 cores, so 2-worker scaling is bounded by 2x "
               "and by whatever the neighbours leave.")
    return "\n".join(out)


def main() -> None:
    args = parse_args()
    sizes = QUICK if args.quick else Sizes()
    for field, attr in (("train_rounds", "train_rounds"), ("tok_rounds", "tok_rounds"), ("steps", "steps"),
                        ("logging_steps", "logging_steps"), ("hidden", "hidden"), ("layers", "layers"),
                        ("tok_records", "tok_records")):
        if getattr(args, attr) is not None:
            setattr(sizes, field, getattr(args, attr))
    if sizes.steps % sizes.logging_steps or sizes.steps < 3 * sizes.logging_steps:
        raise SystemExit("--steps must be a multiple of --logging-steps and at least 3 logging windows")
    names = list(TRAIN_VARIANTS) + (list(EXTRA_TRAIN_VARIANTS) if args.one_worker_two_cpus else [])
    tok_names = list(TOK_VARIANTS)
    if args.quick:
        names, tok_names = QUICK_TRAIN, QUICK_TOK
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="orpo_dist_bench_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        prep = prepare(sizes, workdir)
        train_runs: dict[str, list[dict]] = {}
        tok_runs: dict[str, list[dict]] = {}
        if not args.skip_train:
            start = time.perf_counter()
            prep["prep"] = run_variant("prep", {**prep["base"], "kind": "prep", "out_dir": str(workdir / "prep"),
                                                "num_cpus": 2, "train_records": sizes.train_records}, workdir)
            _progress("pre-tokenize the training set", start)
            train_runs = rounds(names, sizes.train_rounds,
                                lambda name, r: train_spec(prep, sizes, name, workdir, r), workdir, "train")
        if not args.skip_tok:
            tok_runs = rounds(tok_names, sizes.tok_rounds,
                              lambda name, r: tok_spec(prep, sizes, name, workdir, r), workdir, "tok")
    summary = summarize(train_runs, tok_runs, sizes)
    print(render(sizes, prep, summary, args.quick))
    print(f"(bench wall time {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    if args.out:
        results = {"sizes": asdict(sizes), "prep": prep, "summary": summary,
                   "train_runs": train_runs, "tok_runs": tok_runs, "quick": args.quick}
        args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
