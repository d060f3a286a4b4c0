"""AlpacaEval 2.0: pairwise judging against GPT-4-Turbo's 805 reference outputs, win rate and
length-controlled win rate, reproducing alpaca_eval's `weighted_alpaca_eval_gpt4_turbo`.

Usage (later pipeline stages)::

    from evaluation.alpaca_eval import AlpacaEvalConfig, evaluate
    from evaluation.judges import JudgeConfig

    config = AlpacaEvalConfig(judge=JudgeConfig(base_url=..., model="gpt-4-1106-preview",
                                                api_key_env="OPENAI_API_KEY"))
    result = evaluate(outputs, generator="my-model", config=config, output_dir="runs/ae")
    result.summary["length_controlled_winrate"], result.summary["win_rate"]

Modules: `annotator` (prompt, swap, one-example `score`), `data` (reference and
`model_outputs.json`), `metrics` (`aggregate`), `length_control` (the GLM), `run` (`evaluate`).
"""

from evaluation.alpaca_eval.annotator import (
    ALPACA_EVAL_CLF_TEMPLATE,
    AnnotatorConfig,
    Comparison,
    is_swapped,
    judge_request,
    preference_from_logprobs,
    preference_from_text,
    render_messages,
    score,
)
from evaluation.alpaca_eval.data import (
    default_reference_outputs,
    load_reference_outputs,
    make_comparisons,
    model_output_records,
    write_model_outputs,
)
from evaluation.alpaca_eval.length_control import (
    LengthControlConfig,
    download_official_files,
    length_controlled_winrate,
)
from evaluation.alpaca_eval.metrics import aggregate, win_rate_stats
from evaluation.alpaca_eval.run import (
    AlpacaEvalConfig,
    AlpacaEvalResult,
    evaluate,
    judge_comparisons,
)

__all__ = [
    "ALPACA_EVAL_CLF_TEMPLATE",
    "AlpacaEvalConfig",
    "AlpacaEvalResult",
    "AnnotatorConfig",
    "Comparison",
    "LengthControlConfig",
    "aggregate",
    "default_reference_outputs",
    "download_official_files",
    "evaluate",
    "is_swapped",
    "judge_comparisons",
    "judge_request",
    "length_controlled_winrate",
    "load_reference_outputs",
    "make_comparisons",
    "model_output_records",
    "preference_from_logprobs",
    "preference_from_text",
    "render_messages",
    "score",
    "win_rate_stats",
    "write_model_outputs",
]
