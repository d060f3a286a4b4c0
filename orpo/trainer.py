"""The training loop: accumulation groups, global normalisation, metrics, eval, checkpoints.

Written against ``TrainContext`` (where metrics and checkpoints go) and ``Engine`` (how
gradients become updates), so the same loop runs in a plain process and inside Ray Train
workers with DeepSpeed. It imports no Ray.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from orpo.context import TrainContext, all_reduce_sum
from orpo.engine import Engine, rng_state, set_rng_state
from orpo.objective import GlobalCounts, ReferenceLogps, batch_counts, micro_batch_loss
from orpo.packing import real_tokens
from orpo.trainer_config import TrainSections

Batch = dict[str, torch.Tensor]


@dataclass
class TrainState:
    """Where training is: optimiser steps done, and the position in the data."""

    step: int = 0
    epoch: int = 0
    micro_batches_in_epoch: int = 0
    tokens_seen: float = 0.0
    reported_since_checkpoint: list[dict[str, Any]] = field(default_factory=list)
    """Rows reported after the previous checkpoint, up to and with this one's: a restart reports
    them again, since the killed attempt may have persisted the checkpoint but not its rows."""


@dataclass
class LoopInputs:
    """What the loop consumes besides config, context and engine."""

    train_batches: Callable[[int], Iterable[Batch]]
    """Micro-batches of one epoch (for this rank), given the epoch number; deterministic."""
    steps_per_epoch: int
    """Optimiser steps in one epoch (the same on every rank)."""
    eval_batches: Callable[[], Iterable[Batch]] | None = None
    """Micro-batches of the eval set (for this rank)."""
    reference: ReferenceLogps | None = None
    """DPO reference log-probs when the batches do not carry them."""
    chunked: bool = False
    """Use the chunked LM-head path for log-probs."""


class MetricSums:
    """Pair-weighted metric sums of this rank, reduced across ranks on read.

    Sums stay device tensors until ``reduce``, so a micro-batch costs no host sync.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.pairs = 0

    def add(self, metrics: dict[str, torch.Tensor], n_pairs: int) -> None:
        for name, value in metrics.items():
            weighted = value.detach().double() * n_pairs
            self.sums[name] = self.sums[name] + weighted if name in self.sums else weighted
        self.pairs += n_pairs

    def reduce(self, device: torch.device) -> dict[str, float]:
        names = sorted(self.sums)
        values = [self.sums[n].to(device) for n in names]
        values.append(torch.tensor(float(self.pairs), dtype=torch.float64, device=device))
        totals = all_reduce_sum(torch.stack(values)).tolist()
        pairs = totals[-1] or 1.0
        return {name: total / pairs for name, total in zip(names, totals[:-1])}


def _groups(batches: Iterator[Batch], size: int) -> Iterator[list[Batch]]:
    while group := list(itertools.islice(batches, size)):
        yield group


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(cfg: TrainSections, ctx: TrainContext, engine: Engine, inputs: LoopInputs) -> TrainState:
    """Run training to ``loop.total_steps``; resume from ``ctx.restore_dir`` when it is set."""
    state = TrainState()
    if ctx.restore_dir is not None:
        state = restore_checkpoint(ctx, engine, Path(ctx.restore_dir))
        if ctx.restarted:  # this job's own checkpoint: no row up to it may go missing
            for row in state.reported_since_checkpoint:
                ctx.report(row)
        state.reported_since_checkpoint = []
    accumulation = cfg.loop.accumulation_steps(ctx.world_size)
    last_step = cfg.loop.total_steps(inputs.steps_per_epoch)
    grad_norms: list[float] = []
    engine.module.train()

    per_epoch = inputs.steps_per_epoch * accumulation
    if inputs.eval_batches is not None and cfg.loop.eval_at_start and state.step == 0:
        state.reported_since_checkpoint.append({"step": 0, **evaluate(cfg, ctx, engine.module, inputs)})
        ctx.report(state.reported_since_checkpoint[-1])
    # tokens_per_s times training only: eval, checkpoint saves and reports (under Ray Train a report
    # blocks until the controller takes it) are taken out of the window they fall in.
    window, window_start, window_tokens = MetricSums(), time.perf_counter(), 0.0
    while state.step < last_step and state.epoch < cfg.loop.epochs:
        # Resuming mid-epoch skips what the checkpointed run already consumed.
        epoch_batches = iter(inputs.train_batches(state.epoch))
        batches = itertools.islice(epoch_batches, state.micro_batches_in_epoch, per_epoch)
        for group in _groups(batches, accumulation):
            group = [_to_device(b, ctx.device) for b in group]
            counts_tensor = all_reduce_sum(sum(batch_counts(b, cfg.loss) for b in group).to(ctx.device))
            counts = GlobalCounts(pairs=float(counts_tensor[0]), nll_tokens=float(counts_tensor[1]))
            for batch in group:
                loss, metrics, n_pairs = micro_batch_loss(
                    engine.module, batch, cfg.loss, counts, ctx.world_size, inputs.reference,
                    inputs.chunked, cfg.loop.logits_chunk_size)
                engine.backward(loss)
                metrics["padding_fraction"] = batch["padding_fraction"]
                window.add(metrics, n_pairs)
                window_tokens = window_tokens + real_tokens(batch)
            lr = engine.lr()
            grad_norms.append(engine.step())
            state.step += 1
            state.micro_batches_in_epoch += len(group)
            if state.micro_batches_in_epoch >= per_epoch:
                state.epoch, state.micro_batches_in_epoch = state.epoch + 1, 0
            done = state.step >= last_step

            report: dict[str, Any] | None = None
            if state.step % cfg.loop.logging_steps == 0 or done:
                elapsed = time.perf_counter() - window_start
                tokens = float(all_reduce_sum(torch.as_tensor(window_tokens, dtype=torch.float64,
                                                              device=ctx.device).reshape(1))[0])
                state.tokens_seen += tokens
                report = window.reduce(ctx.device)
                report.update(step=state.step, epoch=state.epoch, lr=lr, tokens_per_s=tokens / max(elapsed, 1e-9),
                              grad_norm=sum(grad_norms) / len(grad_norms), tokens_seen=state.tokens_seen)
                window, window_tokens, grad_norms = MetricSums(), 0.0, []
            side_start = time.perf_counter()
            if inputs.eval_batches is not None and (
                    done or (cfg.loop.eval_steps and state.step % cfg.loop.eval_steps == 0)):
                report = {**(report or {"step": state.step}), **evaluate(cfg, ctx, engine.module, inputs)}
            save = done or bool(cfg.loop.save_steps and state.step % cfg.loop.save_steps == 0)
            if save and report is None:
                report = {"step": state.step}
            checkpoint = None
            if report is not None:
                state.reported_since_checkpoint.append(report)
            if save:
                checkpoint = save_checkpoint(ctx, engine, state)
                state.reported_since_checkpoint = []
            if report is not None:
                ctx.report(report, checkpoint=checkpoint)
            if report is not None and "tokens_per_s" in report:
                window_start = time.perf_counter()  # the next window starts once this report returned
            else:
                window_start += time.perf_counter() - side_start
            if done:
                return state
        for _ in epoch_batches:
            pass  # drain the epoch: streaming sources start the next epoch only once this one is read
        if state.micro_batches_in_epoch:  # the epoch's data ran out early (a short last group)
            state.epoch, state.micro_batches_in_epoch = state.epoch + 1, 0
    return state


def _rng_path(directory: Path, rank: int) -> Path:
    return directory / f"rng_rank{rank:05d}.pt"


def save_checkpoint(ctx: TrainContext, engine: Engine, state: TrainState) -> Path:
    """Engine state plus this rank's own RNG state (ranks draw different dropout masks)."""
    directory = Path(ctx.checkpoint_dir) / f"step_{state.step:08d}"
    engine.save_checkpoint(directory, {"train_state": asdict(state)})
    torch.save(rng_state(), _rng_path(directory, ctx.rank))
    return directory


def restore_checkpoint(ctx: TrainContext, engine: Engine, directory: Path) -> TrainState:
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint.resume_from: {directory} is not a directory")
    client_state = engine.load_checkpoint(directory)
    rng_file = _rng_path(directory, ctx.rank)
    if not rng_file.exists():
        raise FileNotFoundError(f"{directory} has no RNG state for rank {ctx.rank} ({rng_file.name}): it was "
                                "written by a run with fewer workers; resume with the same number of workers")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return TrainState(**client_state["train_state"])


@torch.no_grad()
def evaluate(cfg: TrainSections, ctx: TrainContext, model: torch.nn.Module, inputs: LoopInputs) -> dict[str, Any]:
    """Eval-set means of the loss metrics, prefixed ``eval/``, reduced over ranks."""
    assert inputs.eval_batches is not None
    was_training = model.training
    model.eval()
    sums = MetricSums()
    for batch in inputs.eval_batches():
        batch = _to_device(batch, ctx.device)
        # Local denominators: ranks may hold different numbers of eval batches, so no collective here.
        pairs, nll_tokens = batch_counts(batch, cfg.loss).tolist()
        _, metrics, n_pairs = micro_batch_loss(model, batch, cfg.loss, GlobalCounts(pairs, nll_tokens), 1,
                                               inputs.reference, inputs.chunked, cfg.loop.logits_chunk_size)
        sums.add(metrics, n_pairs)
    model.train(was_training)
    return {f"eval/{name}": value for name, value in sums.reduce(ctx.device).items()}
