"""MT-Bench: single-answer grading of 80 two-turn questions with FastChat's official judge prompts.

Follows FastChat `fastchat/llm_judge` (`gen_judgment.py` single mode, `common.run_judge_single`,
`show_result.py`): turn 1 is graded with `single-v1`, turn 2 with `single-v1-multi-turn`; questions
in `NEED_REF_CATS` (math, reasoning, coding) use the `single-math-v1*` prompts with GPT-4's
reference answers. The judge gets the template's system prompt and the formatted user prompt,
temperature 0, max_tokens 2048. The rating is `[[x]]`, else the backup pattern `[x]`; a judgment
with neither is unparseable: FastChat writes -1 and drops it in `show_result`; here it is counted
and listed, and never enters a mean.

Input, the model's answers (generation is a separate stage), either
- our format: one record per question, `{"question_id": 81, "turns": ["answer 1", "answer 2"]}`,
- or FastChat's `model_answer/<model>.jsonl`: `{"question_id": 81, "choices": [{"turns": [...]}]}`,
as a list of dicts or a .jsonl / .json path.

Benchmark files (never copied into the repo) default to `../shared/benchmarks/mt_bench/` next to
the repo root; FastChat ships them under `fastchat/llm_judge/data/mt_bench/`.

Outputs (`evaluate` with `output_dir`): `judgments.jsonl` in FastChat's `model_judgment` format
(score -1 when unscored), `summary.json`, `category_radar.png`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evaluation.judges import ChatRequest, JudgeClient, Judgment, raise_for_failures, template_id
from evaluation.settings import FIXTURE_JUDGE_MODEL as FIXTURE_MODEL_NAME
from evaluation.settings import MT_BENCH_JUDGE_MODEL as OFFICIAL_JUDGE_MODEL
from evaluation.settings import NEED_REF_CATS, MTBenchConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared" / "benchmarks" / "mt_bench"
# FastChat common.py
ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
N_QUESTIONS = 80


@dataclass(frozen=True)
class Match:
    """One judge call: a question, the turn graded, the prompt used and the rendered messages."""

    question_id: int
    category: str
    turn: int
    prompt_name: str
    request: ChatRequest


# --------------------------------------------------------------------------- inputs


def _read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    if not Path(path).exists():
        raise FileNotFoundError(
            f"{path} not found (MT-Bench files ship with FastChat: "
            "fastchat/llm_judge/data/mt_bench/; set the paths in MTBenchConfig)"
        )
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_questions(path: str | os.PathLike) -> list[dict[str, Any]]:
    return _read_records(path)


def load_judge_prompts(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    return {prompt["name"]: prompt for prompt in _read_records(path)}


def load_reference_answers(path: str | os.PathLike) -> dict[int, list[str]]:
    return normalize_answers(_read_records(path))


def normalize_answers(
    records: Sequence[dict[str, Any]] | str | os.PathLike,
) -> dict[int, list[str]]:
    """{question_id: [turn 1 answer, turn 2 answer]} from either accepted input format."""
    if isinstance(records, (str, os.PathLike)):
        records = _read_records(records)
    answers = {}
    for record in records:
        turns = record["turns"] if "turns" in record else record["choices"][0]["turns"]
        answers[int(record["question_id"])] = list(turns)
    return answers


# --------------------------------------------------------------------------- judging


def judge_prompt_name(category: str, turn: int, need_ref_categories=NEED_REF_CATS) -> str:
    """FastChat's judge choice: reference-based for math/reasoning/coding, multi-turn for turn 2."""
    name = "single-math-v1" if category in need_ref_categories else "single-v1"
    return name + ("-multi-turn" if turn == 2 else "")


def render_user_prompt(
    prompt: dict[str, Any],
    question: dict[str, Any],
    answers: Sequence[str],
    turn: int,
    reference: Sequence[str] | None = None,
) -> str:
    """The user message exactly as FastChat's `run_judge_single` formats it."""
    kwargs = {}
    if reference is not None:
        kwargs = {"ref_answer_1": reference[0], "ref_answer_2": reference[1]}
    if turn == 2:
        return prompt["prompt_template"].format(
            question_1=question["turns"][0],
            question_2=question["turns"][1],
            answer_1=answers[0],
            answer_2=answers[1],
            **kwargs,
        )
    return prompt["prompt_template"].format(
        question=question["turns"][0], answer=answers[0], **kwargs
    )


def make_matches(
    questions: Sequence[dict[str, Any]],
    answers: dict[int, list[str]],
    prompts: dict[str, dict[str, Any]],
    references: dict[int, list[str]],
    config: MTBenchConfig,
) -> list[Match]:
    """Two judge calls per question (turn 1, turn 2), as FastChat's `make_match_single`."""
    matches = []
    for question in questions:
        qid, category = int(question["question_id"]), question["category"]
        for turn in (1, 2):
            name = judge_prompt_name(category, turn, config.need_ref_categories)
            prompt = prompts[name]
            needs_reference = category in config.need_ref_categories
            if needs_reference and qid not in references:
                raise ValueError(f"question {qid} ({category}) needs a reference answer")
            user = render_user_prompt(
                prompt, question, answers[qid], turn, references[qid] if needs_reference else None
            )
            request = ChatRequest(
                messages=(("system", prompt["system_prompt"]), ("user", user)),
                template_id=template_id(name, prompt["system_prompt"] + prompt["prompt_template"]),
                temperature=config.temperature,
                max_tokens=config.max_tokens,
            )
            matches.append(Match(qid, category, turn, name, request))
    return matches


def parse_rating(judgment: str) -> tuple[float | None, str]:
    """(rating, how): `[[x]]` first, then FastChat's backup `[x]`; (None, "unparseable")."""
    match = ONE_SCORE_PATTERN.search(judgment)
    how = "ok"
    if not match:
        match, how = ONE_SCORE_PATTERN_BACKUP.search(judgment), "backup_pattern"
    if not match:
        return None, "unparseable"
    return float(ast.literal_eval(match.groups()[0])), how


def score(match: Match, judgment: Judgment) -> dict[str, Any]:
    """One graded turn. `score` is None when unparseable or the request failed."""
    if judgment.error is not None:
        rating, status = None, "request_error"
    else:
        rating, status = parse_rating(judgment.content or "")
    return {
        "question_id": match.question_id,
        "category": match.category,
        "turn": match.turn,
        "judge_prompt": match.prompt_name,
        "user_prompt": match.request.messages[-1][1],
        "judgment": judgment.content if judgment.error is None else judgment.error,
        "score": rating,
        "parse_status": status,
        "judge_model": judgment.response_model,
    }


# --------------------------------------------------------------------------- aggregation


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(scores: Sequence[dict[str, Any]], judge_model: str | None = None) -> dict[str, Any]:
    """Per-turn, per-category and overall means over scored judgments only.

    Keys: overall (mean over both turns, FastChat's "Average"), turn_1, turn_2, by_category
    ({category: mean over both turns}), n_judgments, n_scored, n_unparseable, n_backup_pattern,
    n_request_errors, unscored ([{question_id, turn, parse_status}]), judge_model,
    comparable_to_leaderboard, comparability (reasons it is not).
    """
    scored = [s for s in scores if s["score"] is not None]
    by_turn: dict[int, list[float]] = defaultdict(list)
    by_category: dict[str, list[float]] = defaultdict(list)
    for s in scored:
        by_turn[s["turn"]].append(s["score"])
        by_category[s["category"]].append(s["score"])
    statuses = [s["parse_status"] for s in scores]
    summary: dict[str, Any] = {
        "overall": _mean([s["score"] for s in scored]),
        "turn_1": _mean(by_turn[1]),
        "turn_2": _mean(by_turn[2]),
        "by_category": {category: _mean(v) for category, v in sorted(by_category.items())},
        "n_judgments": len(scores),
        "n_scored": len(scored),
        "n_unparseable": statuses.count("unparseable"),
        "n_backup_pattern": statuses.count("backup_pattern"),
        "n_request_errors": statuses.count("request_error"),
        "unscored": [
            {k: s[k] for k in ("question_id", "turn", "parse_status")}
            for s in scores
            if s["score"] is None
        ],
        "judge_model": judge_model,
    }
    notes = []
    response_models = {s.get("judge_model") for s in scores} - {None}
    if FIXTURE_MODEL_NAME in response_models or judge_model == FIXTURE_MODEL_NAME:
        notes.append("FIXTURE judge: deterministic test double, not an evaluation")
    elif judge_model is not None and judge_model != OFFICIAL_JUDGE_MODEL:
        notes.append(f"judge is {judge_model}, not FastChat's {OFFICIAL_JUDGE_MODEL}")
    if len({s["question_id"] for s in scores}) != N_QUESTIONS:
        notes.append(f"{len({s['question_id'] for s in scores})} of {N_QUESTIONS} questions")
    if len(scored) != len(scores):
        notes.append(f"{len(scores) - len(scored)} judgments unscored (see `unscored`)")
    summary["comparable_to_leaderboard"] = not notes
    summary["comparability"] = notes
    return summary


def fastchat_judgment_record(model: str, judge_model: str, graded: dict[str, Any]) -> dict:
    """A line of FastChat's `model_judgment/<judge>_single.jsonl` (unscored -> -1)."""
    return {
        "question_id": graded["question_id"],
        "model": model,
        "judge": [judge_model, graded["judge_prompt"]],
        "user_prompt": graded["user_prompt"],
        "judgment": graded["judgment"],
        "score": -1 if graded["score"] is None else graded["score"],
        "turn": graded["turn"],
        "tstamp": time.time(),
    }


# --------------------------------------------------------------------------- end to end


@dataclass
class MTBenchResult:
    scores: list[dict[str, Any]]
    """One per (question, turn), see `score`."""
    summary: dict[str, Any]
    """See `aggregate`, plus `model` and `usage` (requests, tokens, cost)."""
    radar_path: Path | None


def evaluate(
    answers: Sequence[dict[str, Any]] | str | os.PathLike,
    model: str,
    config: MTBenchConfig | None = None,
    output_dir: str | os.PathLike | None = None,
    client: JudgeClient | None = None,
) -> MTBenchResult:
    """Grade a model's answers (see the module docstring for the format) and summarise."""
    config = config or MTBenchConfig()
    questions = load_questions(config.questions)
    if config.question_ids is not None:
        wanted = set(config.question_ids)
        questions = [q for q in questions if q["question_id"] in wanted]
    answer_turns = normalize_answers(answers)
    missing = [
        q["question_id"] for q in questions if len(answer_turns.get(q["question_id"], [])) < 2
    ]
    if missing:
        raise ValueError(f"missing or single-turn answers for questions {missing[:10]}")
    matches = make_matches(
        questions,
        answer_turns,
        load_judge_prompts(config.judge_prompts),
        load_reference_answers(config.reference_answers),
        config,
    )

    directory = Path(output_dir) if output_dir is not None else None
    judge_config = config.judge
    if judge_config.cache_path is None and directory is not None:
        judge_config = dataclasses.replace(
            judge_config, cache_path=str(directory / "judge_cache.jsonl")
        )
    owns_client = client is None
    client = client or JudgeClient(judge_config)
    try:
        judgments = client.complete_many([m.request for m in matches], desc="mt-bench")
        raise_for_failures(judgments, client)  # a failed request fails the stage; rerun retries it
    finally:
        if owns_client:
            client.close()
    scores = [score(m, j) for m, j in zip(matches, judgments)]
    summary = {"model": model, **aggregate(scores, judge_model=client.config.model)}
    summary["usage"] = client.usage_summary()

    radar_path = None
    if directory is not None:
        from evaluation.plots import category_radar  # matplotlib only when writing files

        directory.mkdir(parents=True, exist_ok=True)
        with (directory / "judgments.jsonl").open("w") as f:
            for graded in scores:
                record = fastchat_judgment_record(model, client.config.model, graded)
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        (directory / "summary.json").write_text(json.dumps(summary, indent=2))
        radar_path = category_radar(
            {model: summary["by_category"]}, directory / "category_radar.png"
        )
    return MTBenchResult(scores=scores, summary=summary, radar_path=radar_path)
