"""Training-step throughput and peak memory of orpo/ against TRL, a bare PyTorch loop and DPO.

    python bench/step_throughput.py [--steps N] [--repeats R] [--quick] [--out results.json]
                                    [--real-pairs P] [--real-max-length T] [--realistic-only]

Every measurement runs in a fresh process (bench/workers.py) on the same model, batches and
max length. Timing: R rounds, variants interleaved with their order rotated each round; the
table shows medians over rounds, and ratios are medians of per-round ratios. One torch thread
by default, and throughput per second of the process's CPU time next to wall time: on a shared
2-core machine, 2-thread OpenMP steps swung 10x from run to run, and even 1-thread wall times
stretch while neighbours hold the core, whereas CPU time only counts the time we ran (on an
idle machine, 1-thread wall and CPU time agree).
Section 6 trains on long-tailed, UltraFeedback-like lengths (``common.ultrafeedback_like_records``)
at vocabulary 32k: ours packed vs ours padded vs TRL, with the padding waste each actually ran.
Memory: a separate pass, one process per variant, with glibc's mmap threshold pinned so that
freed tensors return to the OS and peak RSS follows live tensor memory (reproducible to
< 1 MiB; with the default allocator the same run varied by ±25 MiB).
"""

from __future__ import annotations

import argparse
import json
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

import torch
from common import (
    ULTRAFEEDBACK_PROMPT,
    ULTRAFEEDBACK_RESPONSE,
    padding_waste,
    trl_strings,
    ultrafeedback_like_records,
    varied_length_records,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from orpo.collate import PreferenceCollator, length_grouped_batches, random_batches
from orpo.data import TokenizeSpec, tokenize_records
from orpo.synthetic import make_preference_records
from orpo.tiny import build_tiny_model, build_tokenizer, tiny_llama_config

STEP_VARIANTS = ["ours", "trl", "bare", "dpo"]
LOGITS_VARIANTS = ["logits_full", "logits_chunked"]
REAL_VARIANTS = ["real_packed", "real_padded", "real_trl"]
LABELS = {
    "ours": "ours, ORPO (orpo.objective + TorchEngine)",
    "trl": "TRL ORPOTrainer.train(), matched args",
    "bare": "bare PyTorch: HF LM loss + AdamW",
    "dpo": "ours, DPO (+ frozen reference fwd)",
    "trl_gc": "[diag] TRL, gradient_checkpointing (its default)",
    "ours_chunked": "[diag] ours, ORPO with chunked=True",
    "logits_full": "full logits (chunked=False)",
    "logits_chunked": "chunked LM head (chunked=True)",
    "real_packed": "ours, ORPO, packed (loop.packing=true)",
    "real_padded": "ours, ORPO, padded (loop.packing=false)",
    "real_trl": "TRL ORPOTrainer.train(), matched args",
}
# glibc's default initial mmap threshold; setting it explicitly turns off its dynamic growth.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


@dataclass
class Sizes:
    """Everything that sets the amount of work; printed with the results."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    batch_pairs: int = 4
    max_length: int = 512
    response_tokens: tuple[int, int] = (200, 400)  # throughput set, uniform per response
    warmup: int = 1
    steps: int = 3
    repeats: int = 3
    threads: int = 1
    padding_records: int = 2000
    padding_response_tokens: tuple[int, int] = (10, 400)
    logits_vocab: int = 32_000
    logits_pairs: int = 8
    logits_length: int = 512
    real_pairs: int = 4  # section 6: pairs per micro-batch
    real_max_length: int = 1024  # section 6: max_length / max_prompt_length as the ORPO recipes
    real_max_prompt_length: int = 512
    real_vocab: int = 32_000


QUICK = Sizes(hidden=64, layers=2, batch_pairs=2, max_length=128, response_tokens=(30, 90), steps=1,
              repeats=1, padding_records=200, logits_pairs=1, logits_length=128, real_pairs=2, real_max_length=256,
              real_max_prompt_length=128)

TARGETS = {  # name: (comparison, target)
    "ours/trl tokens/s": (">=", 1.3),
    "ours/trl peak memory": ("<=", 1.0),
    "ours/bare tokens/s": (">=", 0.9),
    "chunked/full peak memory": ("<=", 0.5),
    "padding, length-grouped": ("<=", 0.05),
    "real: packed/TRL tokens/s": (">=", 1.3),
    "real: packed/TRL peak memory": ("<=", 1.0),
    "real: packed padding waste": ("<=", 0.02),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="timed steps per process (default 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps per process (default 1)")
    parser.add_argument("--repeats", type=int, help="timing rounds over all variants (default 3)")
    parser.add_argument("--batch-pairs", type=int, help="pairs per batch (default 4)")
    parser.add_argument("--threads", type=int, help="torch threads per measurement (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run of a few seconds: tiny sizes, in this process, memory not isolated")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also run TRL with its default gradient checkpointing, and our step "
                             "with the chunked log-prob path at this small vocabulary")
    parser.add_argument("--real-pairs", type=int, help="section 6: pairs per micro-batch (default 4)")
    parser.add_argument("--real-max-length", type=int,
                        help="section 6: max_length (default 1024; max_prompt_length is half of it)")
    parser.add_argument("--realistic-only", action="store_true",
                        help="run section 6 alone (sections 1-5 are skipped: no padding/TRL-at-1k rows)")
    parser.add_argument("--out", type=Path, help="write every measurement and the summary as JSON")
    return parser.parse_args()


def prepare(sizes: Sizes, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """Build the tiny model and the batches every step variant trains on; return the worker spec."""
    model_dir = build_tiny_model(workdir / "model", hidden_size=sizes.hidden, num_layers=sizes.layers,
                                 num_heads=sizes.heads, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_pairs = sizes.batch_pairs * (sizes.warmup + sizes.steps)
    records = varied_length_records(n_pairs, tokenizer, *sizes.response_tokens, seed=seed)
    examples = tokenize_records(records, tokenizer, TokenizeSpec(max_length=sizes.max_length)).examples
    lengths = [ex["length"] for ex in examples]
    batches = length_grouped_batches(lengths, sizes.batch_pairs, seed, drop_last=True)
    trl_records = [trl_strings(record, tokenizer) for record in records]
    data = {"examples": examples, "batches": batches, "trl_records": trl_records}
    (workdir / "data.json").write_text(json.dumps(data))
    seq_lengths = [len(ex["prompt_ids"]) + len(ex[key]) for ex in examples
                   for key in ("chosen_ids", "rejected_ids")]
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    return {
        "model_dir": str(model_dir), "data": str(workdir / "data.json"), "tmp_dir": str(workdir / "trl"),
        "pad_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer), "n_params": n_params,
        "seq_lengths": [min(seq_lengths), max(seq_lengths)], "batch_size": sizes.batch_pairs,
        "max_length": sizes.max_length, "warmup": sizes.warmup, "steps": sizes.steps, "lr": 1e-5, "lam": 0.1,
        "beta": 0.1, "seed": seed, "threads": sizes.threads,
        "vocab": sizes.logits_vocab, "hidden": sizes.hidden, "layers": sizes.layers, "heads": sizes.heads,
        "pairs": sizes.logits_pairs, "length": sizes.logits_length, "prompt_length": sizes.logits_length // 8,
    }


def prepare_realistic(sizes: Sizes, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """Section 6: a 32k-vocabulary Llama (the small BPE tokenizer's ids are a subset of its vocabulary,
    so the LM head and log-softmax cost what a real 32k vocabulary costs) and UltraFeedback-like pairs."""
    from transformers import LlamaForCausalLM

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_llama_config(sizes.real_vocab, sizes.hidden, sizes.layers, sizes.heads, tokenizer)
    torch.manual_seed(seed)
    model_dir = workdir / "model"
    model = LlamaForCausalLM(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    n_pairs = sizes.real_pairs * (sizes.warmup + sizes.steps)
    records = ultrafeedback_like_records(n_pairs, tokenizer, seed, sizes.real_max_length,
                                         sizes.real_max_prompt_length)
    spec_lengths = TokenizeSpec(max_length=sizes.real_max_length, max_prompt_length=sizes.real_max_prompt_length)
    examples = tokenize_records(records, tokenizer, spec_lengths).examples
    batches = length_grouped_batches([ex["length"] for ex in examples], sizes.real_pairs, seed, drop_last=True)
    data = {"examples": examples, "batches": batches,
            "trl_records": [trl_strings(record, tokenizer) for record in records]}
    (workdir / "data.json").write_text(json.dumps(data))
    seq = sorted(len(ex["prompt_ids"]) + len(ex[k]) for ex in examples for k in ("chosen_ids", "rejected_ids"))
    return {
        "model_dir": str(model_dir), "data": str(workdir / "data.json"), "tmp_dir": str(workdir / "trl"),
        "pad_id": tokenizer.pad_token_id, "vocab_size": sizes.real_vocab, "n_params": n_params,
        "seq_lengths": [seq[0], seq[len(seq) // 2], seq[-1]], "truncated": sum(ex["truncated"] for ex in examples),
        "batch_size": sizes.real_pairs, "max_length": sizes.real_max_length, "warmup": sizes.warmup,
        "steps": sizes.steps, "lr": 1e-5, "lam": 0.1, "beta": 0.1, "seed": seed, "threads": sizes.threads,
    }


def padding_report(sizes: Sizes, tokenizer: Any, seed: int = 0) -> list[dict[str, Any]]:
    """Padding waste with random and with length-grouped batches, and the floor set by the pairs."""
    sets = {
        "synthetic": make_preference_records(sizes.padding_records, seed),
        "varied {}-{} tok".format(*sizes.padding_response_tokens): varied_length_records(
            sizes.padding_records, tokenizer, *sizes.padding_response_tokens, seed=seed),
    }
    collator = PreferenceCollator(tokenizer.pad_token_id)
    rows = []
    for name, records in sets.items():
        examples = tokenize_records(records, tokenizer, TokenizeSpec(max_length=sizes.max_length)).examples
        lengths = [ex["length"] for ex in examples]
        grouped = length_grouped_batches(lengths, sizes.batch_pairs, seed, drop_last=True)
        shuffled = random_batches(len(examples), sizes.batch_pairs, seed, drop_last=True)
        rows.append({
            "set": name, "pairs": len(examples), "batch_pairs": sizes.batch_pairs,
            "random": padding_waste(examples, shuffled, collator),
            "grouped": padding_waste(examples, grouped, collator),
            # One pair per batch: chosen and rejected share one padded length, so this much remains.
            "pair_floor": padding_waste(examples, [[i] for i in range(len(examples))], collator),
        })
    return rows


def run_variant(variant: str, spec: dict[str, Any], workdir: Path, isolated: bool,
                pinned_malloc: bool = False) -> dict[str, Any]:
    spec = {**spec, "variant": variant}
    if not isolated:
        from workers import VARIANTS

        torch.set_num_threads(spec["threads"])
        return VARIANTS[variant](spec)
    spec_path, out_path = workdir / f"{variant}.spec.json", workdir / f"{variant}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, **(PINNED_MALLOC if pinned_malloc else {})}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("workers.py")), str(spec_path),
                           str(out_path)], check=False, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out_path.read_text())


def measure(variants: list[str], spec: dict[str, Any], sizes: Sizes, workdir: Path,
            isolated: bool) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Timing rounds (order rotated each round), then one memory run per variant."""
    timed: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for round_index in range(sizes.repeats):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            start = time.perf_counter()
            timed[variant].append(run_variant(variant, spec, workdir, isolated))
            _progress(f"time   round {round_index + 1}/{sizes.repeats} {variant:<15}", start)
    if not isolated:  # one process: peaks are not independent; reuse the timing runs' numbers
        return timed, {v: runs[-1] for v, runs in timed.items()}
    memory = {}
    for variant in variants:
        start = time.perf_counter()
        memory[variant] = run_variant(variant, spec, workdir, isolated, pinned_malloc=True)
        _progress(f"memory {variant:<23}", start)
    return timed, memory


def _progress(what: str, start: float) -> None:
    print(f"  {what} {time.perf_counter() - start:6.1f}s", file=sys.stderr, flush=True)


def tokens_per_s(run: dict[str, Any], clock: str = "cpu_s") -> float:
    """Real tokens per second of ``clock``: ``cpu_s`` (process CPU time) or ``step_s`` (wall)."""
    return sum(run["tokens"]) / sum(run[clock])


def step_time(run: dict[str, Any], clock: str = "cpu_s") -> float:
    return statistics.mean(run[clock])


def round_ratio(a: list[dict], b: list[dict], fn, clock: str) -> float:
    """Median over rounds of fn(a) / fn(b), each ratio taken within one round."""
    return statistics.median(fn(x, clock) / fn(y, clock) for x, y in zip(a, b))


def summarize(timed: dict[str, list[dict]], memory: dict[str, dict], padding: list[dict]) -> dict[str, Any]:
    """Medians per variant, and every ratio with its target (timing ratios in CPU and wall time)."""
    rows = {
        name: {
            "tokens_per_cpu_s": statistics.median(tokens_per_s(r, "cpu_s") for r in runs),
            "tokens_per_wall_s": statistics.median(tokens_per_s(r, "step_s") for r in runs),
            "cpu_step_s": statistics.median(step_time(r, "cpu_s") for r in runs),
            "wall_step_s": statistics.median(step_time(r, "step_s") for r in runs),
            "peak_delta_mib": memory[name]["peak_delta_mib"],
            "waste": waste(runs) if "positions" in runs[0] else None,
        }
        for name, runs in timed.items()
    }

    def timing(a: str, b: str, fn) -> dict[str, float]:
        return {"value": round_ratio(timed[a], timed[b], fn, "cpu_s"),
                "wall": round_ratio(timed[a], timed[b], fn, "step_s")}

    def share(run: dict[str, Any], clock: str) -> float:
        return sum(run["reference_" + clock]) / sum(run[clock])

    peak = {name: run["peak_delta_mib"] for name, run in memory.items()}
    realistic: dict[str, dict[str, float]] = {}
    if "real_packed" in timed:
        realistic.update({
            "real: packed/TRL tokens/s": timing("real_packed", "real_trl", tokens_per_s),
            "real: packed/TRL peak memory": {"value": peak["real_packed"] / peak["real_trl"]},
            "real: packed padding waste": {"value": waste(timed["real_packed"])},
            "real: packed/padded tokens/s": timing("real_packed", "real_padded", tokens_per_s),
            "real: packed/padded peak memory": {"value": peak["real_packed"] / peak["real_padded"]},
            "real: padded padding waste": {"value": waste(timed["real_padded"])},
            "real: TRL padding waste": {"value": waste(timed["real_trl"])},
        })
    if "ours" not in timed:  # --realistic-only
        checks = {name: {**value, **_check(name, value["value"])} for name, value in realistic.items()}
        return {"rows": rows, "checks": checks, "trl_id_mismatches": max(r["id_mismatches"] for r in timed["real_trl"]),
                "trl_tokens_match_ours": all(t["tokens"] == o["tokens"]
                                             for t, o in zip(timed["real_trl"], timed["real_padded"]))}
    measured = {
        "ours/trl tokens/s": timing("ours", "trl", tokens_per_s),
        "ours/trl peak memory": {"value": peak["ours"] / peak["trl"]},
        "ours/bare tokens/s": timing("ours", "bare", tokens_per_s),
        "dpo/orpo step time": timing("dpo", "ours", step_time),
        "dpo: reference fwd / step time": {
            "value": statistics.median(share(r, "cpu_s") for r in timed["dpo"]),
            "wall": statistics.median(share(r, "step_s") for r in timed["dpo"])},
        "chunked/full peak memory": {"value": peak["logits_chunked"] / peak["logits_full"]},
        "chunked/full fwd+bwd time": timing("logits_chunked", "logits_full", step_time),
    }
    if "trl_gc" in timed:
        measured["[diag] ours/TRL-with-checkpointing tok/s"] = timing("ours", "trl_gc", tokens_per_s)
        measured["[diag] ours/TRL-with-checkpointing memory"] = {"value": peak["ours"] / peak["trl_gc"]}
    if "ours_chunked" in timed:
        measured["[diag] ours-chunked/TRL tokens/s"] = timing("ours_chunked", "trl", tokens_per_s)
        measured["[diag] ours-chunked/TRL peak memory"] = {"value": peak["ours_chunked"] / peak["trl"]}
    for row in padding:
        measured[f"padding, length-grouped, {row['set']}"] = {"value": row["grouped"]}
    measured.update(realistic)
    checks = {name: {**value, **_check(name, value["value"])} for name, value in measured.items()}
    return {
        "rows": rows, "checks": checks,
        "trl_id_mismatches": max(r["id_mismatches"] for name in ("trl", "real_trl") for r in timed.get(name, [])),
        "trl_tokens_match_ours": all(t["tokens"] == o["tokens"] for a, b in (("trl", "ours"), ("real_trl", "real_padded"))
                                     for t, o in zip(timed.get(a, []), timed.get(b, []))),
    }


def waste(runs: list[dict[str, Any]]) -> float:
    """Pad positions / all positions the variant's forwards ran on (over all its timed steps)."""
    return 1.0 - sum(sum(r["tokens"]) for r in runs) / sum(sum(r["positions"]) for r in runs)


def _check(name: str, value: float) -> dict[str, Any]:
    key = "padding, length-grouped" if name.startswith("padding") else name
    if key not in TARGETS:
        return {"target": None, "status": "info"}
    op, target = TARGETS[key]
    passed = value >= target if op == ">=" else value <= target
    shown = f"{target:.0%}" if key.startswith("padding") or "waste" in key else f"{target:.2f}x"
    return {"target": f"{'≥' if op == '>=' else '≤'} {shown}", "status": "PASS" if passed else "MISS"}


def _header(sizes: Sizes, spec: dict[str, Any], isolated: bool) -> list[str]:
    low, high = sizes.response_tokens
    lines = [
        (f"ORPO step bench | {platform.machine()}, {os.cpu_count()} cores, {sizes.threads} torch "
         f"thread(s) per run | torch {torch.__version__}, transformers {version('transformers')}, "
         f"trl {version('trl')}"),
        (f"model: random-init Llama, hidden {sizes.hidden}, {sizes.layers} layers, {sizes.heads} heads, "
         f"vocab {spec['vocab_size']}, {spec['n_params'] / 1e6:.2f}M params, fp32, sdpa attention"),
        (f"data: {sizes.batch_pairs} pairs/batch ({2 * sizes.batch_pairs} sequences), max_length "
        f"{sizes.max_length}, responses {low}-{high} tokens, sequences {spec['seq_lengths'][0]}-"
        f"{spec['seq_lengths'][1]} tokens; the same length-grouped batches in the same order for all"),
        (f"timing: {sizes.warmup} warmup + {sizes.steps} timed steps per process x {sizes.repeats} "
         "rounds, order rotated, medians; tokens = non-pad tokens of chosen + rejected; "
         "CPU = the process's CPU time"),
    ]
    if isolated:
        lines.append("memory: peak RSS (VmHWM after clear_refs) minus RSS after model load; one fresh "
                     "process per variant, glibc mmap threshold pinned at 128 KiB")
    else:
        lines.append("SMOKE RUN (--quick): tiny sizes, all in one process; the numbers mean nothing")
    return lines


def render_realistic(sizes: Sizes, spec: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Section 6: the realistic-length table (rows only; its ratios are in the targets table)."""
    rows = summary["rows"]
    (p_med, p_sig), (r_med, r_sig) = ULTRAFEEDBACK_PROMPT, ULTRAFEEDBACK_RESPONSE
    low, mid, high = spec["seq_lengths"]
    out = [
        (f"6. UltraFeedback-like lengths, vocab {spec['vocab_size']} ({spec['n_params'] / 1e6:.1f}M params): "
         f"prompt ~ lognormal(median {p_med:g}, σ {p_sig}), responses ~ lognormal(median {r_med:g}, σ {r_sig}),"),
        (f"   max_length {sizes.real_max_length}/{sizes.real_max_prompt_length}, {sizes.real_pairs} pairs/batch, "
         f"sequences {low}/{mid}/{high} tokens (min/median/max), {spec['truncated']} pairs truncated (lengths are cut in the text, as truncation would); "
         "ours on the chunked LM-head path (logits_mode=auto at 32k)"),
        f"{'':<50}{'tok/CPU-s':>10}{'tok/s wall':>12}{'waste':>12}{'peak ΔRSS MiB':>15}",
    ]
    for name in REAL_VARIANTS:
        row = rows[name]
        out.append(f"  {LABELS[name]:<48}{row['tokens_per_cpu_s']:>10.0f}{row['tokens_per_wall_s']:>12.0f}"
                   f"{row['waste']:>12.1%}{row['peak_delta_mib']:>15.1f}")
    return out + [""]


def render(sizes: Sizes, spec: dict[str, Any], summary: dict[str, Any], padding: list[dict],
           isolated: bool, real_spec: dict[str, Any] | None = None) -> str:
    rows, out = summary["rows"], _header(sizes, spec, isolated) + [""]
    if "ours" not in rows:  # --realistic-only
        out += render_realistic(sizes, real_spec, summary)
        return "\n".join(out + _targets(summary))
    columns = f"{'tok/CPU-s':>10}{'tok/s wall':>12}{'CPU s/step':>12}{'peak ΔRSS MiB':>15}"
    out.append(f"{'1-3. training step: fwd + loss + bwd + AdamW':<50}{columns}")
    for name in [n for n in LABELS if n in rows and not n.startswith(("logits", "real_"))]:
        row = rows[name]
        out.append(f"  {LABELS[name]:<48}{row['tokens_per_cpu_s']:>10.0f}{row['tokens_per_wall_s']:>12.0f}"
                   f"{row['cpu_step_s']:>12.2f}{row['peak_delta_mib']:>15.1f}")
    out.append("")
    title = (f"4. our loss fwd+bwd, vocab {sizes.logits_vocab}, {sizes.logits_pairs} pairs x "
             f"{sizes.logits_length} tok")
    out.append(f"{title:<50}{'CPU s':>10}{'wall s':>12}{'':>12}{'peak ΔRSS MiB':>15}")
    for name in LOGITS_VARIANTS:
        row = rows[name]
        out.append(f"  {LABELS[name]:<48}{row['cpu_step_s']:>10.2f}{row['wall_step_s']:>12.2f}{'':>12}"
                   f"{row['peak_delta_mib']:>15.1f}")
    out.append("")
    columns = f"{'random':>10}{'grouped':>12}{'pair floor':>12}"
    out.append(f"{'5. padding waste = pad / all positions':<50}{columns}")
    for row in padding:
        label = f"{row['set']}, {row['pairs']} pairs, batch {row['batch_pairs']}"
        out.append(f"  {label:<48}{row['random']:>10.1%}{row['grouped']:>12.1%}{row['pair_floor']:>12.1%}")
    out.append("  (pair floor: one pair per batch; a pair's chosen and rejected share one padded length)")
    out.append("")
    if real_spec is not None:
        out += render_realistic(sizes, real_spec, summary)
    return "\n".join(out + _targets(summary))


def _targets(summary: dict[str, Any]) -> list[str]:
    out = []
    out.append(f"{'targets (timing ratios from CPU time)':<50}{'measured':>10}{'(wall)':>12}{'target':>12}")
    for name, check in summary["checks"].items():
        percent = name.startswith("padding") or "/ step" in name or "waste" in name
        shown = [f"{v:.1%}" if percent else f"{v:.2f}x" for v in (check["value"], check.get("wall"))
                 if v is not None]
        wall = f"({shown[1]})" if len(shown) > 1 else ""
        out.append(f"  {name:<48}{shown[0]:>10}{wall:>12}{check['target'] or '':>12}  {check['status']}")
    out.append("")
    out.append(f"TRL trained on the same token ids: {'yes' if summary['trl_id_mismatches'] == 0 else 'NO'}; "
               f"same real tokens per step: {'yes' if summary['trl_tokens_match_ours'] else 'NO'}")
    return out


def main() -> None:
    args = parse_args()
    sizes = QUICK if args.quick else Sizes()
    for field in ("steps", "warmup", "repeats", "batch_pairs", "threads", "real_pairs", "real_max_length"):
        if getattr(args, field) is not None:
            setattr(sizes, field, getattr(args, field))
    if args.real_max_length is not None:
        sizes.real_max_prompt_length = args.real_max_length // 2
    isolated = not args.quick
    timed: dict[str, list[dict]] = {}
    memory: dict[str, dict] = {}
    padding: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="orpo_bench_") as tmp:
        workdir = Path(tmp)
        spec = prepare(sizes, workdir)
        if not args.realistic_only:
            padding = padding_report(sizes, AutoTokenizer.from_pretrained(spec["model_dir"]))
            step_variants = STEP_VARIANTS + (["trl_gc", "ours_chunked"] if args.diagnostics else [])
            for part in (measure(step_variants, spec, sizes, workdir, isolated),
                         # one fwd+bwd: the memory peak is in the first
                         measure(LOGITS_VARIANTS, {**spec, "warmup": 0, "steps": 1}, sizes, workdir, isolated)):
                timed.update(part[0])
                memory.update(part[1])
        real_spec = prepare_realistic(sizes, workdir / "realistic")
        real_timed, real_memory = measure(REAL_VARIANTS, real_spec, sizes, workdir / "realistic", isolated)
        timed.update(real_timed)
        memory.update(real_memory)
    summary = summarize(timed, memory, padding)
    print(render(sizes, spec, summary, padding, isolated, real_spec))
    if args.out:
        results = {"sizes": asdict(sizes), "spec": spec, "realistic_spec": real_spec, "padding": padding,
                   "summary": summary, "timed": timed, "memory": memory, "isolated": isolated}
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
