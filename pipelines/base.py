"""The ``base`` stage of ``pipelines.run``: pretrain the model as a plain causal LM before any method.

Every method then starts from this one base, as the ORPO paper's methods start from a pretrained
model: trained from random init, every log-prob rises while the model learns the language, which
hides the effect the paper measures (its Figure 3 vs Figure 7).

Design: the corpus is unpaired synthetic conversations (``orpo.synthetic.make_lm_records``),
prompts with both kinds of responses, each conversation the ``chosen`` side of one row, trained
by the one training job (``pipelines.train``: Ray Train, DeepSpeed, export) with ``loss.type=sft``
and the NLL over prompt and response tokens, token-normalised: that is exactly the causal-LM loss
over each conversation, so no second loss or data path is needed. The price is a forward of each
row's ``rejected`` side (the other response), which SFT scores for monitoring only.

Outputs under ``<run_dir>/base``: ``corpus/{train,eval}.jsonl``, ``train/`` (the training job's
outputs, its ``export/`` being the base every method loads) and ``base_info.json`` (the held-out
perplexity and what produced it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from orpo.config import replace_values, to_dict
from orpo.synthetic import make_lm_records, write_jsonl
from pipelines.config import Config

BASE_DIR = "base"


def base_dir(run_dir: Path) -> Path:
    return run_dir / BASE_DIR


def base_export(run_dir: Path) -> Path:
    """The pretrained base every method starts from."""
    return base_dir(run_dir) / "train" / "export"


def corpus_spec(cfg: Config) -> str:
    """What the corpus is made from (recorded with the run's inputs)."""
    base = cfg.base
    return (f"synthetic-lm(train: {base.corpus_size} records, seed {base.seed}; "
            f"held-out: {base.eval_size} records, seed {base.eval_seed}; two conversations per record)")


def pretrain_config(cfg: Config, run_dir: Path, model_path: str) -> Config:
    """The pretraining job's config: the run's, the stage's loss and data, then ``base.overrides``."""
    corpus = base_dir(run_dir) / "corpus"
    values: dict[str, Any] = {
        "name": f"{cfg.name}-base", "methods": [], "model.name_or_path": model_path,
        "loss.type": "sft", "loss.nll_span": "prompt_and_response", "loss.nll_normalization": "token",
        "data.source": str(corpus / "train.jsonl"), "data.eval_source": str(corpus / "eval.jsonl"),
        "data.limit": None, "data_pipeline.data_dir": str(base_dir(run_dir) / "data"),
    }
    job = replace_values(cfg, values)
    return replace_values(job, {**cfg.base.overrides, "output_dir": str(base_dir(run_dir) / "train")})


def heldout_perplexity(metrics_path: Path) -> dict[str, Any]:
    """exp(held-out NLL per token) of the last eval row of the pretraining job's metrics."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if isinstance(r.get("eval/nll"), (int, float))]
    if not evals:
        raise RuntimeError(f"{metrics_path}: the base's training job logged no eval/nll row")
    first, last = evals[0], evals[-1]
    return {"heldout_perplexity": math.exp(last["eval/nll"]), "heldout_nll": last["eval/nll"],
            "step": last["step"], "initial_heldout_perplexity": math.exp(first["eval/nll"]),
            "initial_step": first["step"]}


def check_perplexity(info: dict[str, Any], limit: float | None) -> None:
    if limit is not None and info["heldout_perplexity"] > limit:
        raise RuntimeError(
            f"the base reached held-out perplexity {info['heldout_perplexity']:.3f} after {info['step']} steps, above "
            f"base.max_heldout_perplexity={limit:g}: methods would start from a model still learning the "
            "language; train the base longer (base.overrides: loop.max_steps) or raise the limit")


def pretrain(cfg: Config, run_dir: Path, model_path: str) -> dict[str, Any]:
    """Write the corpus, train the base, check and record its held-out perplexity."""
    from pipelines.train import run as train

    corpus = base_dir(run_dir) / "corpus"
    write_jsonl(corpus / "train.jsonl", make_lm_records(cfg.base.corpus_size, cfg.base.seed))
    write_jsonl(corpus / "eval.jsonl", make_lm_records(cfg.base.eval_size, cfg.base.eval_seed))
    job = pretrain_config(cfg, run_dir, model_path)
    result = train(job)
    info = {
        **heldout_perplexity(Path(job.output_dir) / "metrics.jsonl"),
        "perplexity_of": "exp(mean NLL per token) over prompt and response tokens of held-out conversations "
                         "(both kinds of responses)",
        "corpus": corpus_spec(cfg),
        "train_conversations": result["stats"]["train_pairs"],
        "heldout_conversations": result["stats"]["eval_pairs"],
        "started_from": model_path,
        "export_dir": str(base_export(run_dir)),
        "config": to_dict(job),
    }
    (base_dir(run_dir) / "base_info.json").write_text(json.dumps(info, indent=2, default=str))
    print(f"base: held-out perplexity {info['heldout_perplexity']:.3f} after {info['step']} steps "
          f"(from {info['initial_heldout_perplexity']:.1f})", flush=True)
    check_perplexity(info, cfg.base.max_heldout_perplexity)
    return info
