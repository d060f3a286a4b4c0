"""One measured variant per process: ``python bench/workers.py SPEC.json OUT.json`` (see step_throughput).

Each variant loads the model and the prepared batches, takes a resident-memory baseline, then
runs ``warmup`` + ``steps`` training steps; it writes per-step wall and CPU times, real-token
counts and the peak RSS above the baseline. One process per run keeps peaks independent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import PeakRss, seed_everything

from orpo.collate import PreferenceCollator
from orpo.engine import TorchEngine
from orpo.losses import LossType
from orpo.objective import GlobalCounts, ModelReference, batch_counts, micro_batch_loss
from orpo.packing import PackedCollator, real_tokens
from orpo.trainer import MetricSums
from orpo.trainer_config import LossConfig, OptimConfig


def _load_model(model_dir: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                attn_implementation="sdpa").train()


def _batches(spec: dict[str, Any]) -> tuple[list[dict], list[list[int]]]:
    data = json.loads(Path(spec["data"]).read_text())
    return data["examples"], data["batches"][: spec["warmup"] + spec["steps"]]


def _timed_steps(step_fn, batches: list[list[int]], warmup: int) -> dict[str, Any]:
    """Run ``step_fn(indices) -> real tokens`` on each batch; time every step."""
    peak = PeakRss()
    peak.start()
    times, cpu_times, tokens = [], [], []
    for indices in batches:
        start, cpu_start = time.perf_counter(), time.process_time()
        tokens.append(step_fn(indices))
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {"step_s": times[warmup:], "cpu_s": cpu_times[warmup:], "tokens": tokens[warmup:],
            **peak.stop()}


def run_ours(spec: dict[str, Any], loss_type: LossType = LossType.ORPO,
             chunked: bool = False, packed: bool = False) -> dict[str, Any]:
    """orpo: collate, concatenated forward, objective, backward, clip + AdamW (the trainer's body).

    ``packed``: padding-free packed micro-batches (``orpo.packing``), as ``loop.packing`` gives.
    """
    examples, batches = _batches(spec)
    model = _load_model(spec["model_dir"])
    reference, reference_s, reference_cpu_s = None, [], []
    if loss_type.needs_reference_model:
        frozen = ModelReference(_load_model(spec["model_dir"]))

        def reference(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            start, cpu_start = time.perf_counter(), time.process_time()
            logps = frozen(batch)
            reference_s.append(time.perf_counter() - start)
            reference_cpu_s.append(time.process_time() - cpu_start)
            return logps

    loss_cfg = LossConfig(type=loss_type, lam=spec["lam"], beta=spec["beta"])
    engine = TorchEngine(model, OptimConfig(lr=spec["lr"], schedule="constant"), total_steps=len(batches))
    collator = PackedCollator(spec["pad_id"]) if packed else PreferenceCollator(spec["pad_id"])
    window = MetricSums()

    def step(indices: list[int]) -> int:
        batch = collator([examples[i] for i in indices])
        pairs, nll_tokens = batch_counts(batch, loss_cfg).tolist()
        counts = GlobalCounts(pairs, nll_tokens)
        loss, metrics, n_pairs = micro_batch_loss(model, batch, loss_cfg, counts, 1, reference, chunked)
        engine.backward(loss)
        engine.step()
        window.add(metrics, n_pairs)  # the trainer reads every metric each micro-batch
        positions.append(batch["input_ids"].numel())
        return int(real_tokens(batch))

    positions: list[int] = []

    result = _timed_steps(step, batches, spec["warmup"])
    result["positions"] = positions[spec["warmup"]:]
    if reference_s:
        result["reference_step_s"] = reference_s[spec["warmup"]:]
        result["reference_cpu_s"] = reference_cpu_s[spec["warmup"]:]
    return result


def run_bare(spec: dict[str, Any]) -> dict[str, Any]:
    """The limit: HF's built-in LM cross-entropy on the same padded batch, backward, AdamW."""
    examples, batches = _batches(spec)
    model = _load_model(spec["model_dir"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"])
    collator = PreferenceCollator(spec["pad_id"])

    def step(indices: list[int]) -> int:
        batch = collator([examples[i] for i in indices])
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (2B, T)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                     use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    return _timed_steps(step, batches, spec["warmup"])


def run_trl(spec: dict[str, Any], gradient_checkpointing: bool = False) -> dict[str, Any]:
    """TRL's ORPOTrainer.train() on the same batches in the same order; a callback times steps.

    Settings matched to ours: fp32 (TRL's default bf16 off), no gradient checkpointing (TRL's
    default is on; ``gradient_checkpointing=True`` measures that default), same batch size,
    max_length, lr and λ. Its optimiser is its default (fused AdamW).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    data = json.loads(Path(spec["data"]).read_text())
    n_steps = spec["warmup"] + spec["steps"]
    order = [i for indices in data["batches"][:n_steps] for i in indices]
    dataset = Dataset.from_list([data["trl_records"][i] for i in order])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = _load_model(spec["model_dir"])

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append((time.perf_counter(), time.process_time()))

    clock = StepClock()
    args = ORPOConfig(
        output_dir=spec["tmp_dir"], per_device_train_batch_size=spec["batch_size"],
        max_length=spec["max_length"], beta=spec["lam"], learning_rate=spec["lr"], max_steps=n_steps,
        use_cpu=True, bf16=False, gradient_checkpointing=gradient_checkpointing,
        train_sampling_strategy="sequential", report_to="none", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, dataloader_pin_memory=False, seed=spec["seed"],
    )
    trainer = ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # keeps stdout clean; it prints only at log steps anyway

    # Count real tokens of what TRL actually collates, and check its ids equal ours.
    collated_tokens: list[int] = []
    collate = trainer.data_collator

    def counting_collator(features):
        batch = collate(features)
        real = batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
        collated_tokens.append(int(real))
        # Its concatenated forward pads chosen and rejected to their common longest length.
        rows, longest = batch["chosen_input_ids"].shape[0], max(batch["chosen_input_ids"].shape[1],
                                                                batch["rejected_input_ids"].shape[1])
        collated_positions.append(2 * rows * longest)
        return batch

    collated_positions: list[int] = []

    trainer.data_collator = counting_collator
    ours = [data["examples"][i] for i in order]
    mismatched = sum(row["chosen_input_ids"] != ex["prompt_ids"] + ex["chosen_ids"]
                     or row["rejected_input_ids"] != ex["prompt_ids"] + ex["rejected_ids"]
                     for row, ex in zip(trainer.train_dataset, ours))

    peak = PeakRss()
    peak.start()
    trainer.train()
    memory = peak.stop()
    warmup = spec["warmup"]
    step_s = [b[0] - a[0] for a, b in zip(clock.ends, clock.ends[1:])]
    cpu_s = [b[1] - a[1] for a, b in zip(clock.ends, clock.ends[1:])]
    return {"step_s": step_s[warmup:], "cpu_s": cpu_s[warmup:], "tokens": collated_tokens[warmup:n_steps],
            "positions": collated_positions[warmup:n_steps], "id_mismatches": mismatched, "optimizer": args.optim,
            **memory}


def run_logits(spec: dict[str, Any], chunked: bool) -> dict[str, Any]:
    """Forward + backward of our ORPO loss on a random-token batch at a large vocabulary."""
    from transformers import LlamaForCausalLM

    from orpo.tiny import tiny_llama_config

    config = tiny_llama_config(spec["vocab"], spec["hidden"], spec["layers"], spec["heads"])
    model = LlamaForCausalLM(config).train()
    n_rows, length = 2 * spec["pairs"], spec["length"]
    input_ids = torch.randint(3, spec["vocab"], (n_rows, length))  # (2B, T)
    labels = input_ids.clone()
    labels[:, : spec["prompt_length"]] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    loss_cfg = LossConfig(type=LossType.ORPO, lam=spec["lam"])
    pairs, nll_tokens = batch_counts(batch, loss_cfg).tolist()

    def step(_: Any) -> int:
        counts = GlobalCounts(pairs, nll_tokens)
        loss, _, _ = micro_batch_loss(model, batch, loss_cfg, counts, 1, chunked=chunked)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return n_rows * length

    return _timed_steps(step, [None] * (spec["warmup"] + spec["steps"]), spec["warmup"])


VARIANTS = {
    "ours": run_ours,
    "trl": run_trl,
    "trl_gc": lambda spec: run_trl(spec, gradient_checkpointing=True),
    "bare": run_bare,
    "dpo": lambda spec: run_ours(spec, LossType.DPO),
    "ours_chunked": lambda spec: run_ours(spec, chunked=True),
    # Realistic lengths, vocabulary 32k: the log-prob path loop.logits_mode=auto picks there (chunked).
    "real_packed": lambda spec: run_ours(spec, chunked=True, packed=True),
    "real_padded": lambda spec: run_ours(spec, chunked=True),
    "real_trl": run_trl,
    "logits_full": lambda spec: run_logits(spec, chunked=False),
    "logits_chunked": lambda spec: run_logits(spec, chunked=True),
}


def main() -> None:
    spec_path, out_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    seed_everything(spec["seed"])
    result = VARIANTS[spec["variant"]](spec)
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
