"""AlpacaEval 2.0 weighted annotator: prompt, order swap, judge request, one-example score.

Reproduces alpaca_eval's `weighted_alpaca_eval_gpt4_turbo` annotator (alpaca_eval 0.6.6,
Apache-2.0, (c) Tatsu Lab; the template text below is copied verbatim from
`evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt`): the judge sees the two
outputs labelled `m` (first) and `M` (second) and answers with one token; the preference is
P(M) from the logprobs of that token, normalised over {m, M}.

Conventions follow alpaca_eval: `output_1` is the baseline (reference), `output_2` the model;
`preference` is in [1, 2] with 2 = model wins, 1.5 = tie.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from evaluation.judges import ChatRequest, Judgment, template_id
from evaluation.settings import AnnotatorConfig

ANNOTATOR_NAME = "weighted_alpaca_eval_gpt4_turbo"
FIRST_LABEL, SECOND_LABEL = "m", "M"

# Verbatim from alpaca_eval 0.6.6 (Apache-2.0): alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt
ALPACA_EVAL_CLF_TEMPLATE = '''<|im_start|>system
You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based on the quality of their responses to a given instruction. This process will be used to create a leaderboard reflecting the most accurate and human-preferred answers.
<|im_end|>
<|im_start|>user
I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{
    "instruction": """{instruction}""",
}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{
    {
        "model_identifier": "m",
        "output": """{output_1}"""
    },
    {
        "model_identifier": "M",
        "output": """{output_2}"""
    }
}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier
<|im_end|>'''  # noqa: E501

TEMPLATE_ID = template_id(ANNOTATOR_NAME, ALPACA_EVAL_CLF_TEMPLATE)


@dataclass(frozen=True)
class Comparison:
    """One instruction, the baseline's output and the model's output."""

    index: int
    """Position of the instruction in the reference set (alpaca_eval's `index`)."""
    instruction: str
    dataset: str
    output_1: str
    generator_1: str
    output_2: str
    generator_2: str


def chatml_to_messages(prompt: str) -> tuple[tuple[str, str], ...]:
    """Split a ChatML prompt into (role, content) pairs, as alpaca_eval's `prompt_to_chatml`."""
    messages = []
    for block in prompt.strip().split("<|im_start|>")[1:]:
        role, _, rest = block.partition("\n")
        messages.append((role.strip(), rest.split("<|im_end|>", 1)[0].strip()))
    return tuple(messages)


# Split once: outputs are substituted into the contents, so an output that happens to contain
# "<|im_start|>" cannot forge an extra message.
_TEMPLATE_MESSAGES = chatml_to_messages(ALPACA_EVAL_CLF_TEMPLATE)


def render_messages(instruction: str, first: str, second: str) -> tuple[tuple[str, str], ...]:
    """Judge messages with `first` labelled m and `second` labelled M.

    Placeholders are replaced in order, first occurrence only, like alpaca_eval's `make_prompts`.
    """
    rendered = []
    for role, content in _TEMPLATE_MESSAGES:
        for placeholder, value in (
            ("{instruction}", instruction),
            ("{output_1}", first),
            ("{output_2}", second),
        ):
            content = content.replace(placeholder, value, 1)
        rendered.append((role, content))
    return tuple(rendered)


def is_swapped(instruction: str, seed: int = 0) -> bool:
    """Whether the model's output is shown first (as `m`) for this instruction.

    Same rule as alpaca_eval's `RandomSwitchTwoColumnsProcessor`, so both tools show the judge
    the same order: a coin seeded by the instruction text.
    """
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices(
        [False, True], k=1
    )[0]


def judge_request(comparison: Comparison, config: AnnotatorConfig) -> ChatRequest:
    """The judge call for one comparison, with the order swap applied."""
    first, second = comparison.output_1, comparison.output_2
    if is_swapped(comparison.instruction, config.swap_seed):
        first, second = second, first
    return ChatRequest(
        messages=render_messages(comparison.instruction, first, second),
        template_id=TEMPLATE_ID,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        top_logprobs=config.top_logprobs if config.use_logprobs else None,
    )


def preference_from_logprobs(top_logprobs: dict[str, float]) -> float | None:
    """Preference in shown order, 2 - P(m) with P(m) normalised over {m, M} (alpaca_eval's
    `logprob_parser`, is_binarize=False). None when neither label is among the top-k."""
    logprob_first = top_logprobs.get(FIRST_LABEL, -math.inf)
    logprob_second = top_logprobs.get(SECOND_LABEL, -math.inf)
    if math.isinf(logprob_first) and math.isinf(logprob_second):
        return None
    normaliser = max(logprob_first, logprob_second)
    weight_first = math.exp(logprob_first - normaliser)
    weight_second = math.exp(logprob_second - normaliser)
    return 2 - weight_first / (weight_first + weight_second)


def preference_from_text(content: str) -> float | None:
    """Discrete preference in shown order from the generated label: m -> 1, M -> 2."""
    return {FIRST_LABEL: 1.0, SECOND_LABEL: 2.0}.get(content.strip())


def score(comparison: Comparison, judgment: Judgment | None, config: AnnotatorConfig) -> dict:
    """One annotation (alpaca_eval's annotation fields plus how the preference was obtained).

    `preference` is None when the judgment could not be parsed or the request failed; those are
    counted by `aggregate`, never scored. `judgment` is None for identical outputs (a tie, 1.5,
    without asking the judge, as alpaca_eval does).
    """
    swapped = is_swapped(comparison.instruction, config.swap_seed)
    preference: float | None = None
    status, source, raw = "unparseable", None, None
    if judgment is None:
        preference, status, source = 1.5, "ok", "identical_outputs"
    elif judgment.error is not None:
        status, raw = "request_error", judgment.error
    else:
        raw = judgment.content
        shown = None
        if config.use_logprobs and judgment.top_logprobs:
            shown, source = preference_from_logprobs(judgment.top_logprobs[0]), "logprobs"
        elif judgment.content is not None:
            shown, source = preference_from_text(judgment.content), "discrete"
        if shown is not None:
            # Shown order had the model first: 1 <-> 2, as alpaca_eval's `3 - x`.
            preference, status = (3 - shown if swapped else shown), "ok"
        else:
            source = None
    return {
        "index": comparison.index,
        "instruction": comparison.instruction,
        "dataset": comparison.dataset,
        "output_1": comparison.output_1,
        "generator_1": comparison.generator_1,
        "output_2": comparison.output_2,
        "generator_2": comparison.generator_2,
        "annotator": ANNOTATOR_NAME,
        "preference": preference,
        "preference_source": source,
        "parse_status": status,
        "is_switched_outputs": swapped,
        "raw_completion": raw,
        "judge_model": None if judgment is None else judgment.response_model,
        "from_cache": None if judgment is None else judgment.from_cache,
    }


def annotation_needs_judge(comparison: Comparison) -> bool:
    return comparison.output_1 != comparison.output_2
