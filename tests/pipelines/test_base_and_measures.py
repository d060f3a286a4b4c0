"""The base stage's corpus, config and perplexity; the reward win rate and diversity wiring (no Ray)."""

import json
import math
from collections import Counter

import pytest

from evaluation import ifeval
from evaluation.reward_winrate import paired_win_rate
from orpo.config import ConfigError, load_config
from orpo.synthetic import make_lm_records, make_preference_records
from pipelines.base import check_perplexity, heldout_perplexity, pretrain_config
from pipelines.config import Config
from pipelines.reward_diversity import embedding_model_path, verifiable_reward, write_winrates


def test_lm_corpus_holds_every_conversation_once_with_both_kinds_of_response():
    records = make_preference_records(50, seed=7)
    rows = make_lm_records(50, seed=7)
    trained = Counter((r["prompt"], r["chosen"]) for r in rows)  # what an SFT (chosen-only) pass trains on
    expected = Counter([(r["prompt"], r["chosen"]) for r in records] + [(r["prompt"], r["rejected"]) for r in records])
    assert trained == expected and len(rows) == 100
    assert sum(r["follows"] for r in rows) == 50
    # Still verifiable: the IFEval checkers pass the responses that follow their constraint. The
    # generator itself is imperfect (about 2% of its chosen/rejected labels disagree with the
    # checkers, e.g. a forbidden word that is part of the topic), so agreement is checked, not identity.
    agree = [ifeval.score(records[i // 2], row["chosen"], on_missing_punkt="exclude")["prompt_level_strict"]
             is row["follows"] for i, row in enumerate(rows)]
    assert sum(agree) >= 0.9 * len(rows)


def test_base_config_checks_name_the_key():
    with pytest.raises(ConfigError, match="base.seed"):
        load_config(Config, "configs/quickstart.yaml", ["base.seed=0"])  # data.seed is 0: the preference set
    with pytest.raises(ConfigError, match="base.overrides.loss.type"):
        load_config(Config, "configs/quickstart.yaml", ["base.overrides={loss.type: orpo}"])
    with pytest.raises(ConfigError, match="loop.max_step"):
        load_config(Config, "configs/quickstart.yaml", ["base.overrides={loop.max_step: 3}"])
    with pytest.raises(ConfigError, match="baseline_method"):
        load_config(Config, "configs/quickstart.yaml", ["evaluation.reward.baseline_method=dpo"])
    with pytest.raises(ConfigError, match="evaluation.diversity.num_samples"):
        load_config(Config, "configs/quickstart.yaml", ["evaluation.diversity.num_samples=1"])


def test_pretrain_config_is_a_plain_lm_job_on_the_corpus(tmp_path):
    cfg = load_config(Config, "configs/quickstart.yaml", ["base.overrides={loop.max_steps: 7, optim.lr: 0.001}"])
    job = pretrain_config(cfg, tmp_path, "/models/tiny")
    assert job.loss.type.value == "sft" and job.loss.nll_span.value == "prompt_and_response"
    assert job.loss.nll_normalization == "token"
    assert job.data.source == str(tmp_path / "base/corpus/train.jsonl")
    assert job.data.eval_source == str(tmp_path / "base/corpus/eval.jsonl")
    assert (job.loop.max_steps, job.optim.lr, job.model.name_or_path) == (7, 0.001, "/models/tiny")
    assert job.output_dir == str(tmp_path / "base/train") and job.methods == []


def test_heldout_perplexity_is_exp_of_the_last_eval_nll(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "eval/nll": math.log(40.0)}, {"step": 10, "loss": 1.0},
            {"step": 20, "eval/nll": math.log(2.5)}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = heldout_perplexity(path)
    assert info["heldout_perplexity"] == pytest.approx(2.5) and info["step"] == 20
    assert info["initial_heldout_perplexity"] == pytest.approx(40.0) and info["initial_step"] == 0
    check_perplexity(info, 3.0)
    with pytest.raises(RuntimeError, match="max_heldout_perplexity=2"):
        check_perplexity(info, 2.0)


def test_verifiable_reward_and_win_rate_golden_values(tmp_path):
    assert verifiable_reward({"inst_level_strict": [True, False, None, True]}) == pytest.approx(2 / 3)
    assert verifiable_reward({"inst_level_strict": [None]}) is None
    # A wins a, ties b, loses c; d is A's only: win rate (1 + 0.5 + 0) / 3 = 0.5,
    # stderr = sqrt(((0.5² + 0 + 0.5²) / 2) / 3) = sqrt(1/12)
    result = paired_win_rate({"a": 1.0, "b": 0.5, "c": 0.0, "d": 1.0}, {"a": 0.0, "b": 0.5, "c": 1.0})
    assert (result["win_rate"], result["n"], result["wins"], result["ties"], result["losses"]) == (0.5, 3, 1, 1, 1)
    assert result["stderr"] == pytest.approx(math.sqrt(1 / 12))

    for method, rewards in (("sft", {"a": 0.0, "b": 1.0}), ("orpo", {"a": 1.0, "b": 1.0})):
        out = tmp_path / "eval" / method / "reward"
        out.mkdir(parents=True)
        out.joinpath("scores.jsonl").write_text("".join(json.dumps({"id": k, "reward": v}) + "\n"
                                                        for k, v in rewards.items()))
        out.joinpath("summary.json").write_text(json.dumps({"reward": "verifiable: test"}))
    written = write_winrates(tmp_path, ["orpo", "sft"], "sft")
    assert written["methods"]["orpo"]["win_rate"] == 0.75 and "sft" not in written["methods"]
    assert json.loads((tmp_path / "winrate.json").read_text()) == written


def test_the_bundled_minilm_is_a_local_directory():
    path = embedding_model_path(None)
    assert (__import__("pathlib").Path(path) / "config.json").is_file()
    assert embedding_model_path("/my/encoder") == "/my/encoder"


def test_a_configured_reward_model_scores_every_answer(tmp_path):
    """The real-run path: a (tiny, random-init) one-output reward model scores the AlpacaEval
    answers; its rewards are the model's own scores of each (prompt, answer)."""
    import torch
    from transformers import LlamaForSequenceClassification

    from evaluation.reward_winrate import RewardModel
    from orpo.tiny import build_tokenizer, tiny_llama_config
    from pipelines.reward_diversity import read_rewards, score_rewards

    model_dir = tmp_path / "rm"
    tokenizer = build_tokenizer()
    config = tiny_llama_config(len(tokenizer), tokenizer=tokenizer)
    config.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    answers = {"Name a color.": "Blue.", "Pick a fruit.": "Apple"}
    generations = tmp_path / "alpaca_eval.jsonl"
    generations.write_text("".join(json.dumps({"instruction": q, "messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n" for q, a in answers.items()))
    cfg = load_config(Config, "configs/quickstart.yaml",
                      [f"evaluation.reward={{model: {model_dir}, benchmark: alpaca_eval}}"])
    summary = score_rewards(cfg, {"alpaca_eval": generations}, tmp_path)
    assert summary["reward"] == f"reward model {model_dir}" and summary["n"] == 2
    expected = RewardModel(str(model_dir)).score([[{"role": "user", "content": q}] for q in answers],
                                                 list(answers.values()))
    assert list(read_rewards(tmp_path).values()) == pytest.approx(expected)
    with pytest.raises(ValueError, match="not in generation.benchmarks"):
        score_rewards(cfg, {"ifeval": generations}, tmp_path)
