"""GPU check (run by ``bench/gpu.sh``): our ORPO step under DeepSpeed ZeRO-2 on one GPU with MFU,
TRL's ``ORPOTrainer`` on the same batches, vLLM generation throughput on the same model.

The model is a random-init Llama of ~1.1B parameters (TinyLlama-1.1B's shape: hidden 2048,
22 layers, 32 heads, 4 KV heads, MLP 5632, vocabulary 32000), bf16. Pairs have long-tailed
(log-normal) prompt and response lengths, roughly UltraFeedback's: prompt median ~120 tokens,
responses median ~250, cut at ``max_length``. Token ids are random; the tokenizer is a local
32k-word WordLevel tokenizer (word ``w<i>`` is id ``i``), so TRL's tokenization of the rendered
strings can be checked against our ids. Ours runs through the real loop (``orpo.trainer.train``,
``orpo.job.build_job``, ``pipelines.deepspeed_engine.DeepSpeedEngine``), with packing when the
config has a ``loop.packing`` switch and flash-attention varlen when ``flash_attn`` imports.

MFU = real tokens/s × (6·N + 12·L·d·T̄) / 989e12: N the parameters without the input embedding
(a lookup), L layers, d hidden, T̄ the mean real sequence length (the attention term of the
PaLM paper's appendix B, not halved for causality); pad tokens count as no work.

Every section that cannot run (a package missing, no GPU) prints why and the rest go on.
``--dry-run``: a tiny model on CPU, fp32, a few steps: the plumbing only, numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PEAK_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16


@dataclasses.dataclass
class Sizes:
    hidden: int = 2048
    layers: int = 22
    heads: int = 32
    kv_heads: int = 4
    intermediate: int = 5632
    vocab: int = 32000
    max_length: int = 1024
    max_prompt_length: int = 512
    pairs_per_batch: int = 8
    warmup: int = 4
    steps: int = 16  # timed steps (after warmup)
    gen_prompts: int = 256
    gen_tokens: int = 256


DRY = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512, max_length=96,
            max_prompt_length=48, pairs_per_batch=2, warmup=1, steps=2, gen_prompts=4, gen_tokens=8)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny model on CPU: plumbing only")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "trl", "vllm"])
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    return parser.parse_args()


# ---------------------------------------------------------------------------------------------
# Model, tokenizer, pairs
# ---------------------------------------------------------------------------------------------


def build_model_dir(sizes: Sizes, path: Path, seed: int = 0) -> Path:
    """A random-init Llama and a WordLevel tokenizer (``w<i>`` is id ``i``), saved for every section."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, sizes.vocab)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(path)
    config = LlamaConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                         num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
                         intermediate_size=sizes.intermediate, max_position_embeddings=sizes.max_length,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # 1.1B inits in seconds on the GPU
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(path)
    del model
    return path


def make_pairs(sizes: Sizes, n_pairs: int, seed: int = 0) -> list[dict[str, Any]]:
    """Examples in ``orpo.data``'s shape; lengths log-normal (prompt median 120, responses 250)."""
    rng = random.Random(seed)
    scale = sizes.max_length / 1024

    def length(median: float, cap: int) -> int:
        return max(2, min(cap, int(rng.lognormvariate(math.log(median * scale), 0.8))))

    def words(n: int) -> list[int]:
        return [rng.randrange(3, sizes.vocab) for _ in range(n)]

    pairs = []
    for index in range(n_pairs):
        prompt = [1] + words(length(120, sizes.max_prompt_length) - 1)
        room = sizes.max_length - len(prompt)
        chosen, rejected = (words(length(250, room) - 1) + [2] for _ in range(2))
        pairs.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "index": index,
                      "length": len(prompt) + max(len(chosen), len(rejected)), "truncated": False,
                      "source": "bench", "prompt_trimmed": 0})
    return pairs


def render(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids if i > 2)


def batch_order(sizes: Sizes, pairs: list[dict]) -> list[list[int]]:
    from orpo.collate import length_grouped_batches

    n = sizes.warmup + sizes.steps
    order = length_grouped_batches([p["length"] for p in pairs], sizes.pairs_per_batch, seed=0)
    return [b for b in order if len(b) == sizes.pairs_per_batch][:n]


def model_flops_per_token(sizes: Sizes, mean_length: float) -> float:
    d, i, v, layers = sizes.hidden, sizes.intermediate, sizes.vocab, sizes.layers
    kv = d * sizes.kv_heads // sizes.heads
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * i + 2 * d  # q, o; k, v; MLP; norms
    n = layers * per_layer + d + d * v  # without the input embedding: a lookup
    return 6 * n + 12 * layers * d * mean_length


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_ours(sizes: Sizes, model_dir: Path, pairs: list[dict], order: list[list[int]], gpu: bool,
             workdir: Path) -> dict[str, Any]:
    """The real loop under DeepSpeed ZeRO-2, one rank; tokens/s from its own reports after warmup."""
    import deepspeed
    import torch

    from orpo.config import load_config
    from orpo.job import attach_engine, build_job
    from orpo.packing import real_tokens
    from orpo.trainer import LoopInputs, train
    from orpo.trainer_config import LoopConfig
    from pipelines.config import Config
    from pipelines.deepspeed_engine import DeepSpeedEngine, deepspeed_config, disable_cpu_shm_comm

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_free_port()))
    packing_switch = any(f.name == "packing" for f in dataclasses.fields(LoopConfig))
    flash = False
    if gpu:
        try:
            import flash_attn  # noqa: F401

            flash = True
        except ImportError:
            pass
    steps = sizes.warmup + sizes.steps
    overrides = [f"model.name_or_path={model_dir}", f"model.attn_implementation={'flash_attention_2' if flash else 'sdpa'}",
                 f"loop.micro_batch_size={sizes.pairs_per_batch}", f"loop.global_batch_size={sizes.pairs_per_batch}",
                 f"loop.max_steps={steps}", f"loop.logging_steps={sizes.warmup}", "loop.eval_at_start=false",
                 "loop.save_steps=null", "loop.eval_steps=null", f"data.max_length={sizes.max_length}",
                 "deepspeed.zero_stage=2", f"deepspeed.bf16={'on' if gpu else 'auto'}", "optim.schedule=constant",
                 "optim.warmup_steps=0", f"output_dir={workdir / 'ours'}", f"scaling.use_gpu={str(gpu).lower()}"]
    if packing_switch:
        overrides.append("loop.packing=true")
    cfg = load_config(Config, None, overrides)
    if not gpu:
        disable_cpu_shm_comm()
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    job = build_job(cfg, str(model_dir), device, dtype)
    engine = DeepSpeedEngine(job.model, cfg, deepspeed_config(cfg, 1), steps)
    attach_engine(job, cfg, engine.module, device, dtype)
    collator = job.collator(cfg.data.pad_to_multiple_of)

    class Reports:
        rank, world_size, restore_dir = 0, 1, None

        def __init__(self) -> None:
            self.device, self.checkpoint_dir, self.history = device, workdir / "ours" / "ckpt", []

        def report(self, metrics: dict, checkpoint: Any = None) -> None:
            _synchronize()
            self.history.append({**metrics, "_t": time.perf_counter()})

    ctx = Reports()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    batches = [collator([pairs[i] for i in indices]) for indices in order]
    start = time.perf_counter()
    train(cfg, ctx, engine, LoopInputs(lambda epoch: iter(batches), steps_per_epoch=steps, chunked=job.chunked))
    # Windows of ``warmup`` steps; the first holds the warm-up. A window's time is its tokens / tokens_per_s.
    rows = [m for m in ctx.history if "tokens_per_s" in m]
    tokens = rows[-1]["tokens_seen"] - rows[0]["tokens_seen"]
    seconds = sum((b["tokens_seen"] - a["tokens_seen"]) / b["tokens_per_s"] for a, b in zip(rows, rows[1:]))
    real = sum(int(real_tokens(b)) for b in batches[sizes.warmup:])  # packed rows carry no attention mask
    positions = sum(b["input_ids"].numel() for b in batches[sizes.warmup:])
    return {"tokens_per_s": tokens / seconds, "step_s": seconds / sizes.steps, "wall_s": time.perf_counter() - start,
            "padding_fraction": 1 - real / positions, "peak_mem_gib": _peak_gib(gpu), "packing": packing_switch,
            "attention": "flash_attention_2" if flash else "sdpa", "final_loss": rows[-1]["loss"]}


def _peak_gib(gpu: bool) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if gpu else None


def run_trl(sizes: Sizes, model_dir: Path, pairs: list[dict], order: list[list[int]], gpu: bool,
            workdir: Path) -> dict[str, Any]:
    """TRL's ORPOTrainer on the same pairs in the same batches (sequential sampler), bf16 autocast, no
    gradient checkpointing, its default optimiser (fused AdamW)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    flat = [i for indices in order for i in indices]
    records = [{"prompt": render(pairs[i]["prompt_ids"]), "chosen": " " + render(pairs[i]["chosen_ids"]),
                "rejected": " " + render(pairs[i]["rejected_ids"])} for i in flat]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # fp32 weights under bf16 autocast (Trainer's bf16=True): fp32 master weights and Adam state, as
    # DeepSpeed's bf16 mode keeps them for ours; a bf16-loaded model would train in pure bf16.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            _synchronize()
            self.ends.append(time.perf_counter())

    clock = StepClock()
    args = ORPOConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=sizes.pairs_per_batch,
                      max_length=sizes.max_length, beta=1.0,
                      learning_rate=1e-5, max_steps=len(order), use_cpu=not gpu, bf16=gpu,
                      gradient_checkpointing=False, train_sampling_strategy="sequential", report_to="none",
                      save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
                      lr_scheduler_type="constant")
    trainer = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer,
                          callbacks=[clock])
    ours = [pairs[i] for i in flat]
    mismatches = sum(row["chosen_input_ids"] != ex["prompt_ids"] + ex["chosen_ids"]
                     or row["rejected_input_ids"] != ex["prompt_ids"] + ex["rejected_ids"]
                     for row, ex in zip(trainer.train_dataset, ours))
    collated: list[int] = []
    collate = trainer.data_collator

    def counting(features):
        batch = collate(features)
        collated.append(int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = clock.ends[sizes.warmup - 1:]
    seconds = timed[-1] - timed[0]
    tokens = sum(collated[sizes.warmup:len(order)])
    return {"tokens_per_s": tokens / seconds, "step_s": seconds / (len(timed) - 1), "id_mismatches": mismatches,
            "peak_mem_gib": _peak_gib(gpu), "optimizer": args.optim}


def run_vllm(sizes: Sizes, model_dir: Path, pairs: list[dict], gpu: bool) -> dict[str, Any]:
    """Offline generation: ``gen_prompts`` prompts, ``gen_tokens`` new tokens each (EOS ignored)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="bfloat16" if gpu else "float32", gpu_memory_utilization=0.5,
              max_model_len=sizes.max_length + sizes.gen_tokens, seed=0)
    prompts = [{"prompt_token_ids": pairs[i % len(pairs)]["prompt_ids"]} for i in range(sizes.gen_prompts)]
    params = SamplingParams(max_tokens=sizes.gen_tokens, ignore_eos=True, temperature=1.0, seed=0)
    llm.generate(prompts[:8], params)  # warm-up (CUDA graphs, kernels)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"output_tokens_per_s": generated / seconds, "seconds": seconds, "prompts": len(prompts),
            "generated_tokens": generated}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _section(name: str, fn, results: dict[str, Any]) -> None:
    start = time.perf_counter()
    try:
        results[name] = fn()
    except ImportError as error:
        results[name] = {"skipped": f"{type(error).__name__}: {error}"}
    except Exception as error:  # one section failing must not hide the others' figures
        results[name] = {"failed": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
    results[name]["section_s"] = time.perf_counter() - start
    print(f"[gpu bench] {name}: {json.dumps({k: v for k, v in results[name].items() if k != 'traceback'})}",
          flush=True)
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    args = parse_args()
    import torch

    gpu = torch.cuda.is_available() and not args.dry_run
    sizes = DRY if args.dry_run else Sizes()
    if not gpu and not args.dry_run:
        print("[gpu bench] no CUDA device: run with --dry-run on CPU", file=sys.stderr)
        sys.exit(2)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if gpu else "cpu (dry run)",
                               "sizes": dataclasses.asdict(sizes), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="orpo_gpu_bench_") as tmp:
        workdir = Path(tmp)
        model_dir = build_model_dir(sizes, workdir / "model")
        n_pairs = (sizes.warmup + sizes.steps) * sizes.pairs_per_batch * 2
        pairs = make_pairs(sizes, n_pairs)
        order = batch_order(sizes, pairs)
        mean_length = sum(len(pairs[i]["prompt_ids"]) + (len(pairs[i]["chosen_ids"]) + len(pairs[i]["rejected_ids"])) / 2
                          for b in order for i in b) / sum(len(b) for b in order)
        results["flops_per_token"] = model_flops_per_token(sizes, mean_length)
        if "ours" not in args.skip:
            _section("ours", lambda: run_ours(sizes, model_dir, pairs, order, gpu, workdir), results)
        if "trl" not in args.skip:
            _section("trl", lambda: run_trl(sizes, model_dir, pairs, order, gpu, workdir), results)
        if "vllm" not in args.skip:
            _section("vllm", lambda: run_vllm(sizes, model_dir, pairs, gpu), results)
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))


def table(results: dict[str, Any]) -> str:
    s = results["sizes"]
    out = [f"GPU bench | {results['device']} | torch {results['torch']} | Llama h{s['hidden']} x {s['layers']} layers, "
           f"vocab {s['vocab']}, {s['pairs_per_batch']} pairs/step, max_length {s['max_length']}, "
           f"{s['steps']} timed steps after {s['warmup']}"]
    flops = results["flops_per_token"]
    for name, label in (("ours", "ours (loop + DeepSpeed ZeRO-2)"), ("trl", "TRL ORPOTrainer")):
        row = results.get(name, {})
        if "tokens_per_s" in row:
            mfu = row["tokens_per_s"] * flops / PEAK_BF16_FLOPS
            mem = f"{row['peak_mem_gib']:.1f} GiB" if row.get("peak_mem_gib") is not None else "-"
            extra = (f"attention {row['attention']}, packing {'on' if row['packing'] else 'not in this build'}, "
                     f"padding {row['padding_fraction']:.1%}" if name == "ours"
                     else f"id mismatches vs ours {row['id_mismatches']}")
            out.append(f"  {label:<34} {row['tokens_per_s']:>10.0f} real tok/s  MFU {mfu:6.1%} (of 989 TFLOP/s)  "
                       f"step {row['step_s']:.3f} s  peak {mem}  {extra}")
        else:
            out.append(f"  {label:<34} {row.get('skipped') or row.get('failed') or 'not run'}")
    if "tokens_per_s" in results.get("ours", {}) and "tokens_per_s" in results.get("trl", {}):
        out.append(f"  ours / TRL real tokens/s: {results['ours']['tokens_per_s'] / results['trl']['tokens_per_s']:.2f}")
    row = results.get("vllm", {})
    if "output_tokens_per_s" in row:
        out.append(f"  {'vLLM generation':<34} {row['output_tokens_per_s']:>10.0f} output tok/s  ({row['prompts']} prompts x "
                   f"{s['gen_tokens']} tokens, {row['seconds']:.1f} s)")
    else:
        out.append(f"  {'vLLM generation':<34} {row.get('skipped') or row.get('failed') or 'not run'}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
