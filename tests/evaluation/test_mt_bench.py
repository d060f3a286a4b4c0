"""MT-Bench: rating parsing, prompt choice, aggregation without unparseable, radar, end to end."""

from __future__ import annotations

import json

import pytest

from evaluation.fixture_judge import fixture_rating
from evaluation.mt_bench import (
    MTBenchConfig,
    aggregate,
    evaluate,
    judge_prompt_name,
    load_judge_prompts,
    load_questions,
    load_reference_answers,
    make_matches,
    normalize_answers,
    parse_rating,
)
from evaluation.plots import category_radar


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("judgment", "expected"),
    [
        ("Good answer. Rating: [[7]]", (7.0, "ok")),
        ("Rating: [[8.5]] though [3]", (8.5, "ok")),
        ("Rating: [[10]]", (10.0, "ok")),
        ("Rating: [6]", (6.0, "backup_pattern")),
        ("I'd say [[x]] ... final [3]", (3.0, "backup_pattern")),
        ("I cannot rate this answer.", (None, "unparseable")),
        ("Rating: ten out of ten ?!#", (None, "unparseable")),
        ("", (None, "unparseable")),
    ],
)
def test_parse_rating_official_patterns(judgment, expected):
    assert parse_rating(judgment) == expected


def test_judge_prompt_choice_follows_fastchat():
    assert judge_prompt_name("writing", 1) == "single-v1"
    assert judge_prompt_name("writing", 2) == "single-v1-multi-turn"
    for category in ("math", "reasoning", "coding"):
        assert judge_prompt_name(category, 1) == "single-math-v1"
        assert judge_prompt_name(category, 2) == "single-math-v1-multi-turn"
    assert judge_prompt_name("stem", 1) == "single-v1"


def test_both_answer_formats_are_accepted(tmp_path):
    ours = [{"question_id": 81, "turns": ["a1", "a2"]}]
    fastchat = [{"question_id": 81, "answer_id": "x", "model_id": "m",
                 "choices": [{"index": 0, "turns": ["a1", "a2"]}], "tstamp": 0}]
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in fastchat) + "\n")
    assert normalize_answers(ours) == normalize_answers(fastchat) == normalize_answers(path)
    assert normalize_answers(ours) == {81: ["a1", "a2"]}


def test_aggregate_excludes_unparseable_hand_computed():
    """Scored: q81 t1 8, t2 6; q82 t2 4; q101 t1 3. Unscored: q82 t1 (unparseable), q101 t2
    (request error). overall = (8 + 6 + 4 + 3) / 4 = 5.25 (averaging the two in as zeros would
    give 21 / 6 = 3.5; as FastChat's -1, 19 / 6 = 3.17); turn_1 = (8 + 3) / 2 = 5.5;
    turn_2 = (6 + 4) / 2 = 5.0; writing = (8 + 6 + 4) / 3 = 6.0; math = 3.0."""
    def graded(qid, category, turn, score, status="ok"):
        return {"question_id": qid, "category": category, "turn": turn, "score": score,
                "parse_status": status, "judge_model": "gpt-4"}

    summary = aggregate([
        graded(81, "writing", 1, 8.0), graded(81, "writing", 2, 6.0),
        graded(82, "writing", 1, None, "unparseable"), graded(82, "writing", 2, 4.0),
        graded(101, "math", 1, 3.0), graded(101, "math", 2, None, "request_error"),
    ], judge_model="gpt-4")
    assert summary["overall"] == pytest.approx(5.25)
    assert (summary["turn_1"], summary["turn_2"]) == (pytest.approx(5.5), pytest.approx(5.0))
    assert summary["by_category"] == {"math": pytest.approx(3.0), "writing": pytest.approx(6.0)}
    assert (summary["n_judgments"], summary["n_scored"]) == (6, 4)
    assert (summary["n_unparseable"], summary["n_request_errors"]) == (1, 1)
    assert summary["unscored"] == [
        {"question_id": 82, "turn": 1, "parse_status": "unparseable"},
        {"question_id": 101, "turn": 2, "parse_status": "request_error"},
    ]
    assert summary["comparable_to_leaderboard"] is False  # 3 of 80 questions, 2 unscored


def test_radar_png_is_written(tmp_path):
    path = category_radar({"model-a": {"writing": 8.0, "math": 3.5, "coding": None},
                           "model-b": {"writing": 6.0, "stem": 9.0}}, tmp_path / "radar.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_prompts_render_like_fastchat_on_real_questions(mt_bench_dir):
    config = MTBenchConfig(questions=str(mt_bench_dir / "question.jsonl"),
                           judge_prompts=str(mt_bench_dir / "judge_prompts.jsonl"),
                           reference_answers=str(mt_bench_dir / "reference_answer_gpt-4.jsonl"))
    questions = {q["question_id"]: q for q in load_questions(config.questions)}
    assert len(questions) == 80
    prompts = load_judge_prompts(config.judge_prompts)
    references = load_reference_answers(config.reference_answers)
    answers = {81: ["A1 {braces}", "A2"], 111: ["B1", "B2"]}
    matches = make_matches([questions[81], questions[111]], answers, prompts, references, config)
    assert [(m.question_id, m.turn, m.prompt_name) for m in matches] == [
        (81, 1, "single-v1"), (81, 2, "single-v1-multi-turn"),
        (111, 1, "single-math-v1"), (111, 2, "single-math-v1-multi-turn")]
    (system, user) = matches[0].request.messages
    assert system == ("system", "You are a helpful assistant.")
    assert user[1] == prompts["single-v1"]["prompt_template"].format(
        question=questions[81]["turns"][0], answer="A1 {braces}")
    math_turn_2 = matches[3].request.messages
    assert math_turn_2[0] == ("system", prompts["single-math-v1-multi-turn"]["system_prompt"])
    assert references[111][1] in math_turn_2[1][1] and "B2" in math_turn_2[1][1]
    assert all((m.request.temperature, m.request.max_tokens) == (0.0, 2048) for m in matches)


def e2e_config(mt_bench_dir, judge):
    return MTBenchConfig(questions=str(mt_bench_dir / "question.jsonl"),
                         judge_prompts=str(mt_bench_dir / "judge_prompts.jsonl"),
                         reference_answers=str(mt_bench_dir / "reference_answer_gpt-4.jsonl"),
                         judge=judge, question_ids=(81, 101, 111))


# Word counts -> fixture ratings 1 + words // 10 (max 10):
# q81 writing 35 -> 4, 5 -> 1; q101 reasoning 72 -> 8, 120 -> 10; q111 math 15 -> 2, 50 -> 6.
ANSWERS = [{"question_id": 81, "turns": [words(35), words(5)]},
           {"question_id": 101, "turns": [words(72), words(120)]},
           {"question_id": 111, "choices": [{"turns": [words(15), words(50)]}]}]
EXPECTED = {(81, 1): 4, (81, 2): 1, (101, 1): 8, (101, 2): 10, (111, 1): 2, (111, 2): 6}


def test_end_to_end_real_questions_on_fixture(start_judge, judge_config, tmp_path, mt_bench_dir):
    """turn_1 = (4 + 8 + 2) / 3 = 4.667, turn_2 = (1 + 10 + 6) / 3 = 5.667,
    overall = 31 / 6 = 5.167; writing 2.5, reasoning 9.0, math 4.0. The server answers 429 and
    500 at times; the client retries."""
    server = start_judge(fail_429_every=3, fail_500_every=4)
    config = e2e_config(mt_bench_dir, judge_config(server, cache_path=None))
    result = evaluate(ANSWERS, "toy-model", config, output_dir=tmp_path / "mt")

    summary = result.summary
    assert {(s["question_id"], s["turn"]): s["score"] for s in result.scores} == EXPECTED
    assert summary["turn_1"] == pytest.approx(14 / 3) and summary["turn_2"] == pytest.approx(17 / 3)
    assert summary["overall"] == pytest.approx(31 / 6)
    assert summary["by_category"] == {"math": 4.0, "reasoning": 9.0, "writing": 2.5}
    assert server.stats.statuses[429] > 0 and server.stats.statuses[500] > 0
    assert summary["n_unparseable"] == 0 and summary["usage"]["failures"] == 0
    assert "FIXTURE" in " ".join(summary["comparability"])
    reasoning_turn_2 = next(s for s in result.scores if (s["question_id"], s["turn"]) == (101, 2))
    assert "### Reference answer:" in reasoning_turn_2["user_prompt"]

    lines = read_jsonl(tmp_path / "mt" / "judgments.jsonl")
    assert len(lines) == 6 and lines[0]["judge"] == ["fixture-judge", "single-v1"]
    assert set(lines[0]) == {"question_id", "model", "judge", "user_prompt", "judgment", "score",
                             "turn", "tstamp"}
    assert result.radar_path.read_bytes()[:4] == b"\x89PNG"
    written_summary = json.loads((tmp_path / "mt" / "summary.json").read_text())
    assert written_summary["overall"] == pytest.approx(31 / 6)

    requests_before = server.stats.requests
    rerun = evaluate(ANSWERS, "toy-model", config, output_dir=tmp_path / "mt")
    assert server.stats.requests == requests_before and rerun.summary["usage"]["cache_hits"] == 6
    assert fixture_rating(words(120)) == 10  # the fixture caps at 10


def test_end_to_end_malformed_verdicts_are_counted_not_scored(start_judge, judge_config, tmp_path,
                                                             mt_bench_dir):
    server = start_judge(malformed_every=2)
    config = e2e_config(mt_bench_dir, judge_config(server))
    result = evaluate(ANSWERS, "toy-model", config, output_dir=tmp_path / "mt")
    summary = result.summary
    unscored = {(s["question_id"], s["turn"]) for s in result.scores if s["score"] is None}
    assert 0 < summary["n_unparseable"] == server.stats.malformed == len(unscored) < 6
    kept = [EXPECTED[key] for key in EXPECTED if key not in unscored]
    assert summary["overall"] == pytest.approx(sum(kept) / len(kept))
    assert summary["n_scored"] == len(kept)
    lines = read_jsonl(tmp_path / "mt" / "judgments.jsonl")
    assert sorted(line["score"] for line in lines).count(-1) == len(unscored)  # FastChat's -1


def test_missing_answers_are_an_error(mt_bench_dir, start_judge, judge_config):
    server = start_judge()
    config = e2e_config(mt_bench_dir, judge_config(server))
    with pytest.raises(ValueError, match="111"):
        evaluate(ANSWERS[:2], "toy-model", config)
    assert server.stats.requests == 0
