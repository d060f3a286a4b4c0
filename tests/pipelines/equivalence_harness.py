"""Equivalence matrix: DeepSpeed ZeRO runs of ``orpo.trainer.train`` vs the single-process reference.

A ``Cell`` is one way of running the same optimiser steps: ZeRO stage, accumulation, direct or
chunked log-probs, full or LoRA, loss type and data-parallel world size. Every cell trains the
same tiny Llama (vocabulary 32k, so the chunked path is the one real runs take) on the same global
batches, through the real loop (``orpo.trainer.train``) and ``pipelines.deepspeed_engine``.
Its reference is ``orpo.engine.TorchEngine`` in one process on the direct path over the same
global batches, with accumulation = accumulation x world size.

The parent process (pytest) computes the references; then one child process group per world
size (gloo, in-process ranks started with ``subprocess``) runs all of that size's cells in turn,
so DeepSpeed is imported and the group initialised once per world size. A child writes, per
cell, the worst differences to its reference: parameters (all trainable ones, gathered under
ZeRO-3), per-step losses and grad norms.

To add a cell kind (e.g. DPO with loaded or precomputed reference log-probs), extend ``Cell``,
``reference_key`` and ``loop_inputs``; the reference and the comparison are shared.
Run by hand: ``python tests/pipelines/equivalence_harness.py`` prints the whole matrix.
"""

from __future__ import annotations

import gc
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]

VOCAB_SIZE = 32_000  # >= orpo.logps.CHUNKED_AUTO_MIN_VOCAB: real vocabularies, the chunked path
HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
MICRO_PAIRS = 2  # pairs per micro-batch and rank
STEPS = 2  # optimiser steps per cell
LR = 1e-3  # large enough that a lost micro-batch gradient moves parameters by ~LR
CHUNK_SIZE = 16  # tokens per LM-head chunk: several chunks per micro-batch
PAD_ID = 0
SEED = 1234
# Adam divides by sqrt(v) + eps: a gradient element that is ~0 in one run and ~1e-10 (summation
# noise) in the other moves by ~LR * 1e-10 / eps. eps = 1e-6 keeps that under 1e-7 of a step.
ADAM_EPS = 1e-6


@dataclass(frozen=True)
class Cell:
    """One way of running the same optimiser steps."""

    zero_stage: int
    accumulation: int
    chunked: bool
    lora: bool = False
    loss_type: str = "orpo"
    world_size: int = 1
    reference: str = "loaded"
    """DPO only: the reference model kept ``loaded``, or its log-probs ``precomputed``."""
    packed: bool = False
    """Padding-free packed micro-batches (``orpo.packing``); the reference stays padded."""
    export: str | None = None
    """Also export the trained model (``full``, ``merged`` or ``adapter``), reload it and compare its
    logits with the in-training model's."""

    @property
    def name(self) -> str:
        name = (f"zero{self.zero_stage}-acc{self.accumulation}-{'chunked' if self.chunked else 'direct'}-"
                f"{'lora' if self.lora else 'full'}-{self.loss_type}-ws{self.world_size}")
        if self.loss_type == "dpo":
            name += f"-ref-{self.reference}"
        name += "-packed" if self.packed else ""
        return name + (f"-export-{self.export}" if self.export else "")

    @property
    def global_pairs(self) -> int:
        """Pairs per optimiser step over all ranks and accumulation steps."""
        return MICRO_PAIRS * self.accumulation * self.world_size

    @property
    def reference_key(self) -> str:
        """What the reference run depends on (not ZeRO, logits path or the split over ranks)."""
        return f"{'lora' if self.lora else 'full'}-{self.loss_type}-pairs{self.global_pairs}"

    def reference_cell(self) -> Cell:
        """The single-process run this cell must equal: direct logits, all micro-batches local."""
        return Cell(zero_stage=-1, accumulation=self.accumulation * self.world_size, chunked=False,
                    lora=self.lora, loss_type=self.loss_type, world_size=1)

    @property
    def lora_save(self) -> str:
        return "adapter" if self.export == "adapter" else "merged"


@dataclass
class RunResult:
    """What a run leaves behind: trainable parameters after the last step and the reports."""

    params: dict[str, torch.Tensor]
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    export_logits_max_abs: float | None = None


class MatrixContext:
    """``orpo.context.TrainContext`` for one rank of the matrix: metrics kept in memory."""

    def __init__(self, rank: int, world_size: int, checkpoint_dir: Path):
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cpu")
        self.checkpoint_dir = checkpoint_dir
        self.restore_dir, self.restarted = None, False
        self.history: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], checkpoint: Path | None = None) -> None:
        self.history.append(dict(metrics))


# --- config: the only place that names config fields ------------------------------------------

def train_config(cell: Cell):
    """The job config of ``cell`` (the reference uses the same one with world size 1)."""
    from orpo.config import replace_values
    from pipelines.config import Config

    return replace_values(Config(), {
        "loop.micro_batch_size": MICRO_PAIRS, "loop.global_batch_size": cell.global_pairs, "loop.max_steps": STEPS,
        "loop.epochs": 1, "loop.logging_steps": 1, "loop.eval_steps": None, "loop.eval_at_start": False,
        "loop.save_steps": None, "loop.logits_chunk_size": CHUNK_SIZE,
        "optim.lr": LR, "optim.schedule": "constant", "optim.warmup_steps": 0, "optim.max_grad_norm": 1.0,
        "optim.adam_eps": ADAM_EPS, "loss.type": cell.loss_type,
        "model.lora.enabled": cell.lora, "model.lora.r": 4, "model.lora.alpha": 8, "model.lora.dropout": 0.0,
        "model.lora.save": cell.lora_save, "loss.precompute_reference": cell.reference == "precomputed",
        "scaling.num_workers": cell.world_size, "deepspeed.zero_stage": max(cell.zero_stage, 0),
        "deepspeed.torch_adam": True, "deepspeed.bf16": "off",
    })


# --- model and data ---------------------------------------------------------------------------

def write_base_model(directory: Path) -> Path:
    """The tiny 32k-vocabulary Llama every cell starts from (fp32 safetensors)."""
    from transformers import LlamaForCausalLM

    from orpo.tiny import tiny_llama_config

    config = tiny_llama_config(VOCAB_SIZE, HIDDEN_SIZE, NUM_LAYERS, NUM_HEADS)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = PAD_ID, 1, 2
    torch.manual_seed(SEED)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def load_model(model_dir: Path, cfg) -> torch.nn.Module:
    """The base model plus LoRA (seeded, so every run draws the same adapter init)."""
    from transformers import AutoModelForCausalLM

    from orpo.modeling import prepare_for_training

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    torch.manual_seed(SEED + 1)
    return prepare_for_training(model, cfg.model)


def micro_batches(cell: Cell) -> list[list[dict[str, torch.Tensor]]]:
    """Per optimiser step, the global batch as micro-batches of MICRO_PAIRS pairs, in global order.

    Lengths vary so every padded micro-batch has padding; the data depend only on the global batch
    size. Packed cells get the same pairs packed (``orpo.packing.PackedCollator``).
    """
    from orpo.collate import PreferenceCollator
    from orpo.packing import PackedCollator

    rng = random.Random(SEED + cell.global_pairs)
    collate = PackedCollator(PAD_ID) if cell.packed else PreferenceCollator(PAD_ID)
    steps = []
    for _ in range(STEPS):
        pairs = []
        for index in range(cell.global_pairs):
            prompt = [1] + [rng.randrange(3, VOCAB_SIZE) for _ in range(rng.randint(3, 12))]
            chosen = [rng.randrange(3, VOCAB_SIZE) for _ in range(rng.randint(2, 14))] + [2]
            rejected = [rng.randrange(3, VOCAB_SIZE) for _ in range(rng.randint(2, 14))] + [2]
            pairs.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "index": index})
        steps.append([collate(pairs[i:i + MICRO_PAIRS]) for i in range(0, len(pairs), MICRO_PAIRS)])
    return steps


def loop_inputs(cell: Cell, rank: int, reference=None, precompute_with=None):
    """This rank's micro-batches (every ``world_size``-th one of each global batch).

    DPO: ``reference`` gives live reference log-probs; ``precompute_with`` (a reference scorer)
    writes them into the batches once, before training, as ``loss.precompute_reference`` does.
    """
    from orpo.trainer import LoopInputs

    steps = micro_batches(cell)
    mine = [batch for step in steps for i, batch in enumerate(step) if i % cell.world_size == rank]
    if precompute_with is not None:
        with torch.no_grad():
            for batch in mine:
                batch["ref_chosen_logps"], batch["ref_rejected_logps"] = precompute_with(batch)
    return LoopInputs(train_batches=lambda epoch: iter(mine), steps_per_epoch=STEPS, reference=reference,
                      chunked=cell.chunked)


def dpo_reference(cell: Cell, cfg, policy: torch.nn.Module, model_dir: Path, wrap=None):
    """The job set-up's own DPO reference for ``cell``: (live reference, precompute scorer)."""
    from orpo.job import live_reference, reference_scorer

    if cell.loss_type != "dpo":
        return None, None
    if cell.reference == "precomputed":
        return None, reference_scorer(cfg, str(model_dir), torch.device("cpu"), torch.float32)
    return live_reference(cfg, policy, str(model_dir), None if wrap else torch.device("cpu"), torch.float32,
                          cell.chunked, wrap), None


def _result(ctx: MatrixContext, params: dict[str, torch.Tensor]) -> RunResult:
    rows = [r for r in ctx.history if "loss" in r]
    return RunResult(params, [r["loss"] for r in rows], [r["grad_norm"] for r in rows])


# --- the two ways to train --------------------------------------------------------------------

def run_reference(cell: Cell, model_dir: Path, workdir: Path) -> RunResult:
    """``TorchEngine`` in this process (no process group), direct log-probs."""
    from orpo.engine import TorchEngine
    from orpo.trainer import train

    ref = cell.reference_cell()
    cfg = train_config(ref)
    model = load_model(model_dir, cfg)
    engine = TorchEngine(model, cfg.optim, STEPS)
    ctx = MatrixContext(0, 1, workdir / "reference-checkpoints")
    reference, _ = dpo_reference(ref, cfg, model, model_dir)  # always live: the plain reference
    train(cfg, ctx, engine, loop_inputs(ref, 0, reference))
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return _result(ctx, params)


def run_deepspeed(cell: Cell, model_dir: Path, rank: int, workdir: Path) -> RunResult:
    """``pipelines.deepspeed_engine.DeepSpeedEngine`` on this rank of the live process group."""
    import deepspeed

    from orpo.logps import LogitsMode, use_chunked
    from orpo.trainer import train
    from pipelines.deepspeed_engine import DeepSpeedEngine, deepspeed_config

    cfg = train_config(cell)
    ds_config = deepspeed_config(cfg, cell.world_size)
    if cell.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        hf_ds_config = HfDeepSpeedConfig(ds_config)
        model = load_model(model_dir, cfg)
        del hf_ds_config
        unset_hf_deepspeed_config()
    else:
        model = load_model(model_dir, cfg)
    engine = DeepSpeedEngine(model, cfg, ds_config, STEPS)
    if cell.chunked:  # as pipelines.train resolves it: a tiny forward through the engine (every rank)
        assert use_chunked(engine.module, LogitsMode.AUTO)  # vocabulary 32k: auto picks chunked
    if cell.packed:  # as pipelines.train resolves loop.packing: a tiny forward through the engine
        from orpo.packing import use_packing

        assert use_packing(engine.module, True)
    live_zero3_reference = cell.zero_stage == 3 and cell.loss_type == "dpo" and cell.reference == "loaded"
    wrap = None
    if live_zero3_reference:  # as pipelines.train: loaded partitioned, wrapped in an inference engine
        from transformers.integrations import HfDeepSpeedConfig

        from pipelines.deepspeed_engine import inference_engine

        hf_ds_config = HfDeepSpeedConfig(ds_config)
        wrap = lambda m: inference_engine(m, ds_config)
    reference, scorer = dpo_reference(cell, cfg, model, model_dir, wrap)
    if live_zero3_reference:
        del hf_ds_config
        unset_hf_deepspeed_config()
    ctx = MatrixContext(rank, cell.world_size, workdir / f"{cell.name}-rank{rank}")
    train(cfg, ctx, engine, loop_inputs(cell, rank, reference, scorer))
    trainable = [(n, p) for n, p in engine.ds.module.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in trainable], enabled=cell.zero_stage == 3):
        params = {n: p.detach().clone() for n, p in trainable}
    result = _result(ctx, params)
    if cell.export:
        result.export_logits_max_abs = export_round_trip(cell, cfg, engine, model, model_dir, workdir, rank)
    engine.ds.destroy()
    del engine, model, reference, scorer
    gc.collect()
    return result


class _Tokenizer:
    """The export's tokenizer stand-in: the harness model has no tokenizer files to save."""

    def save_pretrained(self, directory) -> None:
        pass


def export_round_trip(cell: Cell, cfg, engine, model, model_dir: Path, workdir: Path, rank: int) -> float:
    """Export through the job set-up (gathered state dict, LoRA merged or adapter), reload it as a
    user would, and return the largest |logit| difference to the in-training model on a probe."""
    from transformers import AutoModelForCausalLM

    from orpo.job import TrainingJob, export_trained

    probe = micro_batches(cell)[0][0]
    engine.module.eval()
    with torch.no_grad():  # every rank: a collective under ZeRO-3
        trained = engine.module(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    state_dict = engine.full_state_dict()  # a collective under ZeRO-3
    if rank != 0:
        return 0.0
    out = workdir / f"{cell.name}-export"
    export_trained(cfg, TrainingJob(str(model_dir), _Tokenizer(), model), out, state_dict)
    if cell.export == "adapter":
        from peft import AutoPeftModelForCausalLM

        reloaded = AutoPeftModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    else:
        reloaded, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        logits = reloaded.eval()(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    return float((logits - trained).abs().max())


def compare(result: RunResult, reference: RunResult, initial: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Worst differences to the reference; ``update`` is the reference's largest parameter change."""
    missing = set(reference.params) ^ set(result.params)
    if missing:
        raise ValueError(f"trainable parameters differ from the reference's: {sorted(missing)[:5]}")
    diffs = {n: float((result.params[n] - p).abs().max()) for n, p in reference.params.items()}
    worst = max(diffs, key=diffs.get)
    update = max(float((p - initial[n]).abs().max()) for n, p in reference.params.items())

    def rel(a: list[float], b: list[float]) -> float:
        if len(a) != len(b):
            return float("inf")
        return max((abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)), default=0.0)

    return {"param_max_abs": diffs[worst], "worst_param": worst, "update_max_abs": update,
            "loss_max_rel": rel(result.losses, reference.losses),
            "grad_norm_max_rel": rel(result.grad_norms, reference.grad_norms),
            "grad_norms": result.grad_norms, "reference_grad_norms": reference.grad_norms,
            "export_logits_max_abs": result.export_logits_max_abs}


# --- processes --------------------------------------------------------------------------------

def worker(rank: int, world_size: int, job_path: Path) -> None:
    """One rank: join the gloo group, run this world size's cells in turn, write the diffs."""
    torch.set_num_threads(1)
    from pipelines.deepspeed_engine import disable_cpu_shm_comm

    disable_cpu_shm_comm()
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)
    job = json.loads(job_path.read_text())
    workdir, model_dir = Path(job["workdir"]), Path(job["model_dir"])
    refs = torch.load(workdir / "references.pt", weights_only=False)
    results = {}
    for spec in job["cells"]:
        cell = Cell(**spec)
        print(f"cell {cell.name}", flush=True)
        started = time.perf_counter()
        result = run_deepspeed(cell, model_dir, rank, workdir)
        reference = RunResult(**refs["runs"][cell.reference_key])
        results[cell.name] = {**compare(result, reference, refs["initial"][cell.lora]),
                              "seconds": time.perf_counter() - started}
        print(f"result {json.dumps(results[cell.name])}", flush=True)
    if rank == 0:
        (workdir / f"results-ws{world_size}.json").write_text(json.dumps(results, indent=1))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _initial_params(model_dir: Path, lora: bool) -> dict[str, torch.Tensor]:
    cfg = train_config(Cell(0, 1, False, lora))
    return {n: p.detach().clone() for n, p in load_model(model_dir, cfg).named_parameters() if p.requires_grad}


def run_matrix(cells: list[Cell], workdir: Path, timeout_s: float = 840) -> dict[str, dict[str, Any]]:
    """Every cell's worst differences to its reference, by cell name."""
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = write_base_model(workdir / "base_model")
    refs: dict[str, Any] = {"runs": {}, "initial": {}}
    for cell in cells:
        if cell.reference_key not in refs["runs"]:
            refs["runs"][cell.reference_key] = asdict(run_reference(cell, model_dir, workdir))
        if cell.lora not in refs["initial"]:
            refs["initial"][cell.lora] = _initial_params(model_dir, cell.lora)
    torch.save(refs, workdir / "references.pt")  # plain dicts and tensors: loadable by the children

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "MASTER_ADDR": "127.0.0.1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    groups = {}
    for world_size in sorted({c.world_size for c in cells}):
        job = workdir / f"job-ws{world_size}.json"
        job.write_text(json.dumps({"workdir": str(workdir), "model_dir": str(model_dir),
                                   "cells": [asdict(c) for c in cells if c.world_size == world_size]}))
        port = str(_free_port())
        procs = []
        for rank in range(world_size):
            rank_env = {**env, "MASTER_PORT": port, "RANK": str(rank), "LOCAL_RANK": str(rank),
                        "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size)}
            log = (workdir / f"ws{world_size}-rank{rank}.log").open("w")
            procs.append(subprocess.Popen([sys.executable, __file__, "worker", str(rank), str(world_size), str(job)],
                                          env=rank_env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT))
        groups[world_size] = procs
    deadline = time.time() + timeout_s
    results: dict[str, dict[str, Any]] = {}
    try:
        for world_size, procs in groups.items():
            for rank, proc in enumerate(procs):
                try:
                    code: Any = proc.wait(timeout=max(deadline - time.time(), 1))
                except subprocess.TimeoutExpired:
                    code = "timeout"
                if code != 0:
                    log = (workdir / f"ws{world_size}-rank{rank}.log").read_text()
                    log = "\n".join(line for line in log.splitlines() if "Warning" not in line)[-8000:]
                    raise RuntimeError(f"world size {world_size} rank {rank} exited with {code}:\n{log}")
            results.update(json.loads((workdir / f"results-ws{world_size}.json").read_text()))
    finally:
        for proc in (p for procs in groups.values() for p in procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'cell':<44} {'param max|Δ|':>12} {'update':>9} {'loss rel':>9} {'gnorm rel':>9} {'s':>5}"]
    for name, r in results.items():
        lines.append(f"{name:<44} {r['param_max_abs']:>12.3e} {r['update_max_abs']:>9.2e} "
                     f"{r['loss_max_rel']:>9.2e} {r['grad_norm_max_rel']:>9.2e} {r['seconds']:>5.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.path.insert(0, str(REPO_ROOT))
        from test_equivalence_matrix import CELLS

        # python equivalence_harness.py [WORKDIR [SUBSTRING ...]]: the cells whose names contain one
        workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="equivalence-"))
        chosen = [c for c in CELLS if not sys.argv[2:] or any(s in c.name for s in sys.argv[2:])]
        print(workdir)
        print(format_table(run_matrix(chosen, workdir)))
