"""AlpacaEval 2.0: parity with alpaca_eval, win rate, LC GLM, end to end on the fixture judge."""

from __future__ import annotations

import importlib.resources
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from evaluation.alpaca_eval import (
    ALPACA_EVAL_CLF_TEMPLATE,
    AlpacaEvalConfig,
    AnnotatorConfig,
    Comparison,
    LengthControlConfig,
    aggregate,
    evaluate,
    is_swapped,
    length_controlled_winrate,
    model_output_records,
    preference_from_logprobs,
    render_messages,
    score,
    win_rate_stats,
    write_model_outputs,
)
from evaluation.alpaca_eval.length_control import standardized_length_difference
from evaluation.fixture_judge import fixture_prob_first
from evaluation.judges import Judgment

INSTRUCTIONS = [f"Instruction number {i}: explain topic {i * 7 % 13}." for i in range(60)]


def official():
    """alpaca_eval itself, for parity (imports pkg_resources, hence setuptools<81)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("alpaca_eval", reason="alpaca_eval not installed (parity)")


def annotation(index, preference, len_1=100, len_2=100, status="ok"):
    return {
        "index": index, "instruction": f"i{index}", "output_1": "a" * len_1,
        "output_2": "b" * len_2, "generator_1": "gpt4_1106_preview", "generator_2": "model",
        "preference": preference, "parse_status": status,
        "preference_source": "logprobs" if preference is not None else None,
    }


# --------------------------------------------------------------------------- annotator


def test_template_is_alpaca_evals_verbatim_and_renders_like_it():
    alpaca_eval = official()
    from alpaca_eval import utils

    configs = importlib.resources.files(alpaca_eval) / "evaluators_configs"
    shipped = (configs / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt").read_text()
    assert ALPACA_EVAL_CLF_TEMPLATE == shipped

    row = {"instruction": 'Write "hi" {twice}', "output_1": "hi\nhi", "output_2": "  hello  "}
    [prompt], _ = utils.make_prompts(pd.DataFrame([row]), template=shipped)
    expected = [(m["role"], m["content"]) for m in utils.prompt_to_chatml(prompt)]
    assert list(render_messages(row["instruction"], row["output_1"], row["output_2"])) == expected


def test_swap_matches_alpaca_evals_random_switch():
    official()
    from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor

    processor = RandomSwitchTwoColumnsProcessor(
        two_columns_to_switch=["output_1", "output_2"], random_seed_columns=["instruction"],
        _switch_column="is_switched_outputs", seed=0,
    )
    df = pd.DataFrame({"instruction": INSTRUCTIONS, "output_1": "base", "output_2": "model"})
    expected = processor.preprocess(df)["is_switched_outputs"].tolist()
    ours = [is_swapped(instruction) for instruction in INSTRUCTIONS]
    assert ours == expected
    assert 15 < sum(ours) < 45  # both orders occur


def test_preference_from_logprobs_matches_alpaca_evals_parser():
    """P(m) = 0.2 / (0.2 + 0.6) = 0.25 -> preference 2 - 0.25 = 1.75 (m = shown first)."""
    top = {"m": math.log(0.2), "M": math.log(0.6), "Both": math.log(0.1)}
    assert preference_from_logprobs(top) == pytest.approx(1.75)
    assert preference_from_logprobs({"M": -0.1, "x": -3}) == 2.0  # m absent: P(m) = 0
    assert preference_from_logprobs({"The": -0.1}) is None

    official()
    from alpaca_eval.completion_parsers import logprob_parser

    completion = {"logprobs": {"content": [{"top_logprobs": [
        {"token": t, "logprob": lp} for t, lp in top.items()]}]}}
    [expected] = logprob_parser(completion, "m", ["m", "M"], is_binarize=False)
    assert preference_from_logprobs(top) == pytest.approx(expected, abs=1e-12)


def test_score_unswaps_and_never_scores_unparseable():
    """Shown preference 1.25 (P(m) = 0.75): if the model was shown first (swapped) the model's
    output won, stored as 3 - 1.25 = 1.75; unswapped it is the baseline's win, 1.25."""
    config = AnnotatorConfig()
    swapped = next(i for i in INSTRUCTIONS if is_swapped(i))
    unswapped = next(i for i in INSTRUCTIONS if not is_swapped(i))
    judgment = Judgment(key="k", content="m", top_logprobs=({"m": math.log(0.75),
                                                            "M": math.log(0.25)},))

    def comparison(instruction, model_output="model"):
        return Comparison(0, instruction, "d", "base", "gpt4_1106_preview", model_output, "model")

    assert score(comparison(swapped), judgment, config)["preference"] == pytest.approx(1.75)
    assert score(comparison(unswapped), judgment, config)["preference"] == pytest.approx(1.25)

    discrete = AnnotatorConfig(use_logprobs=False)
    annotated = score(comparison(unswapped), Judgment(key="k", content="M"), discrete)
    assert (annotated["preference"], annotated["preference_source"]) == (2.0, "discrete")

    garbage = score(comparison(swapped), Judgment(key="k", content="Both are good"), discrete)
    assert garbage["preference"] is None and garbage["parse_status"] == "unparseable"
    failed = score(comparison(swapped), Judgment(key="k", content=None, error="boom"), config)
    assert failed["preference"] is None and failed["parse_status"] == "request_error"
    tie = score(comparison(swapped, model_output="base"), None, config)
    assert (tie["preference"], tie["preference_source"]) == (1.5, "identical_outputs")


# --------------------------------------------------------------------------- win rate


def test_win_rate_and_standard_error_hand_computed():
    """Preferences 2, 1, 1.5, 1.75 -> x = p - 1 = 1, 0, 0.5, 0.75.
    mean = 2.25 / 4 = 0.5625 -> win_rate 56.25.
    deviations 0.4375, -0.5625, -0.0625, 0.1875; squares sum 0.19140625 + 0.31640625 +
    0.00390625 + 0.03515625 = 0.546875; / (n - 1) = 0.18229167; sqrt = 0.42695628;
    / sqrt(4) = 0.21347814 -> standard_error 21.347814.
    discrete: 1, 0, 0.5, 1 (1.75 rounds to a win) -> 2.5 / 4 = 62.5.
    """
    stats = win_rate_stats([2.0, 1.0, 1.5, 1.75])
    assert stats["win_rate"] == pytest.approx(56.25)
    assert stats["standard_error"] == pytest.approx(21.347814, abs=1e-6)
    assert stats["discrete_win_rate"] == pytest.approx(62.5)
    counts = (stats["n_wins"], stats["n_wins_base"], stats["n_draws"], stats["n_total"])
    assert counts == (2, 1, 1, 4)

    official()
    from alpaca_eval.metrics import get_winrate

    expected = get_winrate([{"preference": p} for p in [2.0, 1.0, 1.5, 1.75]])
    for key in ("win_rate", "standard_error", "discrete_win_rate", "n_wins", "n_draws"):
        assert stats[key] == pytest.approx(expected[key])


def test_aggregate_counts_unparseable_and_excludes_them():
    """Scored: 2.0, 1.0 -> win rate 50; the unparseable (would be 0 wins if averaged in as
    zeros: 33.3) and the failed request are counted, listed, and left out."""
    annotations = [
        annotation(0, 2.0),
        annotation(1, 1.0),
        annotation(2, None, status="unparseable"),
        annotation(3, None, status="request_error"),
    ]
    summary = aggregate(annotations, judge_model="gpt-4-1106-preview")
    assert summary["win_rate"] == pytest.approx(50.0) and summary["n_total"] == 2
    assert (summary["n_unparseable"], summary["n_request_errors"]) == (1, 1)
    assert summary["unscored_indices"] == [2, 3]
    assert summary["comparable_to_leaderboard"] is False
    assert any("1 unparseable" in note for note in summary["comparability"])


# --------------------------------------------------------------------------- length control


def synthetic_lengths(length_shift: float, n: int = 400, seed: int = 7):
    """Baseline lengths 500..3000 chars; model lengths exp(shift +- noise) times them, with
    antithetic noise so that shift 0 means "as long on average"."""
    rng = np.random.default_rng(seed)
    baseline = rng.integers(500, 3000, n)
    noise = rng.normal(0, 0.4, n // 2)
    model = np.round(baseline * np.exp(length_shift + np.r_[noise, -noise])).astype(int)
    return baseline, model


def length_biased_judge(quality: float, baseline, model):
    """P(model wins) = sigmoid(quality - 1.5 tanh(std. length difference)): prefers longer."""
    z = standardized_length_difference(baseline, model)
    return 1 / (1 + np.exp(-(quality - 1.5 * np.tanh(z))))


def test_lc_pulls_a_longer_equal_quality_model_back_to_50():
    baseline, model = synthetic_lengths(length_shift=0.5)
    win_prob = length_biased_judge(0.0, baseline, model)
    result = length_controlled_winrate(win_prob, baseline, model, np.arange(len(win_prob)))
    raw = win_prob.mean() * 100
    assert raw > 65  # the length-biased judge rewards verbosity
    assert result["length_controlled_winrate"] == pytest.approx(50.0, abs=1.0)
    assert result["glm_weights"]["np.tanh(std_delta_len)"] == pytest.approx(-1.5, abs=0.1)
    assert result["glm"] == "length_controlled_minimal"
    assert "not comparable" in result["lc_comparability_note"]


def test_lc_keeps_quality_and_leaves_an_equally_long_model_alone():
    """Quality 0.4 -> true win rate sigmoid(0.4) = 59.87 %."""
    baseline, equal = synthetic_lengths(length_shift=0.0)
    win_prob = length_biased_judge(0.4, baseline, equal)
    result = length_controlled_winrate(win_prob, baseline, equal, np.arange(len(win_prob)))
    assert result["length_controlled_winrate"] == pytest.approx(win_prob.mean() * 100, abs=0.5)
    assert result["length_controlled_winrate"] == pytest.approx(59.87, abs=0.5)

    baseline, longer = synthetic_lengths(length_shift=0.5)
    win_prob = length_biased_judge(0.4, baseline, longer)
    result = length_controlled_winrate(win_prob, baseline, longer, np.arange(len(win_prob)))
    assert win_prob.mean() * 100 > 70
    assert result["length_controlled_winrate"] == pytest.approx(59.87, abs=0.5)


def test_lc_model_against_itself_is_50():
    result = length_controlled_winrate([0.5] * 10, [10] * 10, [10] * 10, range(10),
                                       model_is_baseline=True)
    assert result["length_controlled_winrate"] == 50.0


@pytest.mark.parametrize(
    "glm", ["length_controlled_minimal", "length_controlled_noreg", "length_controlled_v1"]
)
def test_lc_parity_with_alpaca_eval(glm, tmp_path, monkeypatch):
    """alpaca_eval's `get_length_controlled_winrate` run offline: its hub download is pointed
    at a synthetic df_gamed.csv (two gamed baselines, random instruction difficulty)."""
    official()
    from alpaca_eval.metrics import glm_winrate

    n = 300
    rng = np.random.default_rng(0)
    baseline, model = synthetic_lengths(0.3, n=n, seed=1)
    difficulty = rng.normal(0, 1, n)
    win_prob = length_biased_judge(0.2 + 0.5 * difficulty, baseline, model)
    gamed = []
    for name, factor in [("verbose", 2.0), ("concise", 0.5)]:
        delta = baseline - baseline * factor
        std_delta = delta / delta.std()
        p = 1 / (1 + np.exp(-(-np.tanh(std_delta) + 0.5 * difficulty)))
        gamed.append(pd.DataFrame({
            "model": name, "index": np.arange(n), "preference": p, "std_delta_len": std_delta,
            "instruction_difficulty": difficulty, "not_gamed_baseline": False}))
    gamed_path = tmp_path / "df_gamed.csv"
    pd.concat(gamed).to_csv(gamed_path, index=False)
    difficulty_path = tmp_path / "instruction_difficulty.csv"
    pd.Series(difficulty, name="instruction_difficulty").to_csv(difficulty_path)
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kwargs: str(gamed_path))

    annotations = pd.DataFrame({
        "output_1": ["a" * k for k in baseline], "output_2": ["b" * k for k in model],
        "preference": 1 + win_prob, "generator_1": "gpt4_1106_preview", "generator_2": "model",
        "annotator": "weighted_alpaca_eval_gpt4_turbo"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = glm_winrate.get_length_controlled_winrate(
            annotations, glm_name=glm, save_weights_dir=None)
    config = {
        "length_controlled_minimal": LengthControlConfig(),
        "length_controlled_noreg": LengthControlConfig(
            instruction_difficulty_csv=str(difficulty_path)
        ),
        "length_controlled_v1": LengthControlConfig(gamed_baselines_csv=str(gamed_path)),
    }[glm]
    ours = length_controlled_winrate(win_prob, baseline, model, np.arange(n), config)
    assert ours["glm"] == glm
    assert ours["length_controlled_winrate"] == pytest.approx(
        expected["length_controlled_winrate"], abs=1e-8)
    assert ours["lc_standard_error"] == pytest.approx(expected["lc_standard_error"], abs=1e-8)
    assert (ours["lc_comparability_note"] is None) == (glm == "length_controlled_v1")


# --------------------------------------------------------------------------- files, end to end


def test_model_outputs_json_is_alpaca_eval_format(tmp_path):
    references = [{"instruction": f"q{i}", "output": "ref", "generator": "gpt4_1106_preview",
                   "dataset": "koala"} for i in range(3)]
    records = model_output_records(["a", "b", "c"], references, generator="my-model")
    path = write_model_outputs(tmp_path / "model_outputs.json", records)
    loaded = json.loads(path.read_text())
    assert loaded == [{"instruction": f"q{i}", "output": o, "generator": "my-model",
                       "dataset": "koala"} for i, o in enumerate("abc")]
    subset = model_output_records([{"instruction": "q2", "output": "z"}], references, "m")
    assert [r["instruction"] for r in subset] == ["q2"]
    with pytest.raises(ValueError):
        model_output_records(["a"], references, "m")


def test_end_to_end_on_fixture_judge_with_faults(start_judge, judge_config, tmp_path,
                                                  alpaca_reference_path):
    """12 real instructions. The model's output is the reference plus or minus words, so the
    fixture's verdict is known: P(model wins) = sigmoid((words_model - words_ref) / 20) whatever
    the shown order. One output equals the reference: a tie without a judge call. The server
    throws 429s and 500s (retried) and malformed verdicts (counted, not scored)."""
    references = json.loads(alpaca_reference_path.read_text())[:12]
    outputs = []
    for i, ref in enumerate(references):
        words = ref["output"].split()
        if i == 0:
            output = ref["output"]
        elif i % 2:
            output = " ".join(words + ["more"] * (5 * i))
        else:
            output = " ".join(words[: len(words) // 2])
        outputs.append({"instruction": ref["instruction"], "output": output})
    server = start_judge(fail_429_every=4, fail_500_every=7, malformed_every=4)
    config = AlpacaEvalConfig(reference_outputs=str(alpaca_reference_path),
                              judge=judge_config(server, cache_path=None), allow_subset=True)
    result = evaluate(outputs, "toy-model", config, output_dir=tmp_path / "ae")

    annotations, summary = result.annotations, result.summary
    assert len(annotations) == 12 and server.stats.completions == 11  # the tie costs nothing
    assert server.stats.statuses[429] > 0 and server.stats.statuses[500] > 0
    assert summary["usage"]["failures"] == 0
    assert 0 < summary["n_unparseable"] == server.stats.malformed < 11
    scored = [a for a in annotations if a["preference"] is not None]
    assert len(scored) == 12 - summary["n_unparseable"] == summary["n_total"]
    for a in scored:
        if a["preference_source"] == "identical_outputs":
            assert a["preference"] == 1.5
            continue
        expected = 1 + fixture_prob_first(a["output_2"], a["output_1"])
        assert a["preference"] == pytest.approx(expected, abs=1e-9)
    assert {a["is_switched_outputs"] for a in scored} == {True, False}
    assert summary["win_rate"] == pytest.approx(
        np.mean([a["preference"] - 1 for a in scored]) * 100)
    assert summary["comparable_to_leaderboard"] is False
    notes = " | ".join(summary["comparability"])
    assert "FIXTURE" in notes and "12 of the 805" in notes and "not comparable" in notes

    written = json.loads((tmp_path / "ae" / "model_outputs.json").read_text())
    assert [set(r) for r in written] == [{"instruction", "output", "generator", "dataset"}] * 12
    written_summary = json.loads((tmp_path / "ae" / "summary.json").read_text())
    assert written_summary["n_total"] == summary["n_total"]

    requests_before = server.stats.requests
    rerun = evaluate(outputs, "toy-model", config, output_dir=tmp_path / "ae")
    assert server.stats.requests == requests_before
    assert rerun.summary["win_rate"] == summary["win_rate"]
    assert rerun.summary["usage"]["cache_hits"] == 11
