"""Length-controlled win rate: the GLM of Dubois et al. 2024 (alpaca_eval's `glm_winrate.py`).

    logit P(model beats baseline on instruction i)
        = theta_model - theta_baseline                     (`not_gamed_baseline.astype(float)`)
        + phi * tanh(std_delta_len_i)                      (`np.tanh(std_delta_len)`)
        + gamma * psi_i                                    (`instruction_difficulty`)

with std_delta_len_i = (len(baseline_i) - len(model_i)) / std over instructions (characters).
It is fitted by L1-regularised logistic regression on the soft preferences (each example enters
twice, as label 1 with weight p and label 0 with weight 1 - p; liblinear, no intercept, C chosen
by 5-fold grouped cross-validation on that soft log-loss), and the LC win rate is the mean
prediction with the length term set to zero, x100.

The official fit needs two files from the hub dataset `tatsu-lab/alpaca_eval`:
`df_gamed.csv` (per-instruction difficulty psi, plus annotations of two "gamed" baselines, a
verbose and a concise GPT-4-Turbo, that regularise the fit with weight lambda/2 each) and,
without it, `instruction_difficulty.csv`. Which GLM runs depends on what is given:

- df_gamed.csv           -> `length_controlled_v1` (the leaderboard's GLM)
- instruction_difficulty -> `length_controlled_noreg` (no regularisation to gamed baselines)
- neither                -> `length_controlled_minimal` (no difficulty term) + a note that the
                            number is not comparable to the leaderboard.

Reproduced from alpaca_eval 0.6.6 (Apache-2.0) and checked against it in the tests; the
cross-validation loop is written out instead of using `LogisticRegressionCV` with sklearn's
global metadata-routing switch. Unlike alpaca_eval, annotations without a preference are left out
of the prediction average too (they are reported, never scored).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from evaluation.settings import LengthControlConfig

LENGTH_FEATURE = "np.tanh(std_delta_len)"
DIFFICULTY_FEATURE = "instruction_difficulty"
MODEL_FEATURE = "not_gamed_baseline.astype(float)"
GLM_FEATURES = {
    "length_controlled_v1": (LENGTH_FEATURE, DIFFICULTY_FEATURE, MODEL_FEATURE),
    "length_controlled_noreg": (LENGTH_FEATURE, DIFFICULTY_FEATURE, MODEL_FEATURE),
    "length_controlled_minimal": (LENGTH_FEATURE, MODEL_FEATURE),
}
NOT_COMPARABLE_NOTE = (
    "length control: official instruction difficulty / gamed baselines not provided "
    "(tatsu-lab/alpaca_eval df_gamed.csv); fitted locally with the '{glm}' GLM: "
    "not comparable to the leaderboard's LC win rate"
)


def glm_name(config: LengthControlConfig) -> str:
    if config.gamed_baselines_csv:
        return "length_controlled_v1"
    if config.instruction_difficulty_csv:
        return "length_controlled_noreg"
    return "length_controlled_minimal"


def standardized_length_difference(baseline_lengths, model_lengths) -> np.ndarray:
    """(len_baseline - len_model) / std; all zeros when the differences do not vary (no
    length information, where alpaca_eval would divide by zero)."""
    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    spread = delta.std(ddof=1) if len(delta) > 1 else 0.0
    if not np.isfinite(spread) or spread == 0:
        return np.zeros_like(delta)
    return delta / spread


def weighted_log_loss(target_prob, predicted_prob, sample_weight=None) -> float:
    """Mean cross-entropy against soft targets (alpaca_eval's `logloss`)."""
    predicted = np.clip(predicted_prob, 1e-15, 1 - 1e-15)
    losses = target_prob * np.log(predicted) + (1 - target_prob) * np.log(1 - predicted)
    if sample_weight is not None:
        losses = losses * sample_weight
    return float(-np.mean(losses))


def _l1_logistic(C: float, random_state) -> LogisticRegression:
    return LogisticRegression(
        C=C, l1_ratio=1.0, solver="liblinear", fit_intercept=False, random_state=random_state
    )


def fit_soft_l1_logistic(
    features: np.ndarray,
    target_prob: np.ndarray,
    sample_weight: np.ndarray | None = None,
    n_splits: int = 5,
    n_cs: int = 10,
    random_state: int = 123,
) -> tuple[np.ndarray, float]:
    """Coefficients (and C) of an L1 logistic regression on soft labels, C picked by grouped CV.

    Mirrors alpaca_eval's `fit_LogisticRegressionCV(is_ytrue_proba=True)`: each row appears as
    label 1 weighted p and label 0 weighted 1 - p (times `sample_weight`); both copies share a
    CV group. Within a fold the C grid shares one RandomState, as in sklearn's regularisation
    path, so liblinear sees the same seeds.
    """
    n_rows = len(target_prob)  # features: (N, F)
    features_twice = np.vstack([features, features])  # (2N, F)
    labels = np.r_[np.ones(n_rows), np.zeros(n_rows)]  # (2N,)
    label_prob = np.r_[target_prob, 1 - target_prob]  # (2N,)
    true_weight = None if sample_weight is None else np.r_[sample_weight, sample_weight]
    fit_weight = label_prob if true_weight is None else label_prob * true_weight
    groups = np.r_[np.arange(n_rows), np.arange(n_rows)]
    soft_target = np.r_[target_prob, target_prob]  # what each copy should predict for label 1

    cs = np.logspace(-4, 4, n_cs)
    total_score = np.zeros(len(cs))
    for train, test in GroupKFold(n_splits=n_splits).split(features_twice, labels, groups):
        fold_rng = np.random.RandomState(random_state)
        for j, C in enumerate(cs):
            model = _l1_logistic(C, fold_rng)
            model.fit(features_twice[train], labels[train], sample_weight=fit_weight[train])
            predicted = model.predict_proba(features_twice[test])[:, 1]
            fold_weight = None if true_weight is None else true_weight[test]
            total_score[j] -= weighted_log_loss(soft_target[test], predicted, fold_weight)
    best_C = float(cs[int(np.argmax(total_score))])
    final = _l1_logistic(best_C, random_state)
    final.fit(features_twice, labels, sample_weight=fit_weight)
    return final.coef_[0], best_C


def load_gamed_baselines(path: str | os.PathLike) -> pd.DataFrame:
    """alpaca_eval's df_gamed.csv: index, preference in [0, 1], std_delta_len,
    instruction_difficulty, not_gamed_baseline (False)."""
    return pd.read_csv(path).drop(columns=["model"], errors="ignore")


def load_instruction_difficulty(path: str | os.PathLike) -> dict[int, float]:
    series = pd.read_csv(path, index_col=0).squeeze("columns")
    return {int(index): float(value) for index, value in series.items()}


def length_controlled_winrate(
    model_win_prob,
    baseline_lengths,
    model_lengths,
    instruction_index,
    config: LengthControlConfig | None = None,
    *,
    model_is_baseline: bool = False,
) -> dict[str, Any]:
    """LC win rate of a model against the baseline from per-instruction soft preferences.

    Args: arrays of equal length N over judged instructions: `model_win_prob` in [0, 1]
    (alpaca_eval's preference - 1), output lengths in characters, and `instruction_index`, the
    position of each instruction among the 805 (to look up its difficulty).
    """
    config = config or LengthControlConfig()
    name = glm_name(config)
    feature_names = GLM_FEATURES[name]
    win_prob = np.asarray(model_win_prob, dtype=float)  # (N,)
    index = np.asarray(instruction_index, dtype=int)  # (N,)
    out: dict[str, Any] = {
        "glm": name,
        "lc_comparability_note": None
        if name == "length_controlled_v1"
        else NOT_COMPARABLE_NOTE.format(glm=name),
    }
    if model_is_baseline:  # by construction, as alpaca_eval does
        return {
            **out,
            "length_controlled_winrate": 50.0,
            "lc_standard_error": 0.0,
            "glm_weights": dict.fromkeys(feature_names, 0.0),
            "glm_C": None,
        }
    if len(win_prob) < config.n_splits:
        return {
            **out,
            "length_controlled_winrate": float("nan"),
            "lc_standard_error": float("nan"),
            "glm_weights": None,
            "glm_C": None,
            "lc_comparability_note": f"length control: {len(win_prob)} annotations are too few "
            f"for {config.n_splits}-fold cross-validation",
        }

    gamed = load_gamed_baselines(config.gamed_baselines_csv) if config.gamed_baselines_csv else None
    if gamed is not None:
        first_rows = gamed.drop_duplicates("index")
        difficulty_by_index = dict(zip(first_rows["index"], first_rows[DIFFICULTY_FEATURE]))
    elif config.instruction_difficulty_csv:
        difficulty_by_index = load_instruction_difficulty(config.instruction_difficulty_csv)
    else:
        difficulty_by_index = {}
    difficulty = np.array([difficulty_by_index.get(i, np.nan) for i in index])  # (N,)
    if DIFFICULTY_FEATURE in feature_names and np.isnan(difficulty).any():
        missing = index[np.isnan(difficulty)][:5].tolist()
        raise ValueError(f"no instruction difficulty for instruction indices {missing}")

    def design(length_term: np.ndarray, difficulty_term: np.ndarray, is_model: np.ndarray):
        columns = {
            LENGTH_FEATURE: np.tanh(length_term),
            DIFFICULTY_FEATURE: difficulty_term,
            MODEL_FEATURE: is_model.astype(float),
        }
        return np.column_stack([columns[f] for f in feature_names])  # (rows, F)

    ones = np.ones(len(win_prob))
    std_delta_len = standardized_length_difference(baseline_lengths, model_lengths)
    train_features = design(std_delta_len, difficulty, ones)
    train_target, sample_weight = win_prob, None
    if gamed is not None:
        # alpaca_eval stacks the gamed baselines first, each weighted lambda / 2.
        gamed_features = design(
            gamed["std_delta_len"].to_numpy(float),
            gamed[DIFFICULTY_FEATURE].to_numpy(float),
            gamed["not_gamed_baseline"].to_numpy(bool),
        )
        train_features = np.vstack([gamed_features, train_features])
        train_target = np.r_[gamed["preference"].to_numpy(float), win_prob]
        is_model_row = np.r_[gamed["not_gamed_baseline"].to_numpy(bool), ones.astype(bool)]
        sample_weight = np.where(is_model_row, 1.0, config.regularize_to_baseline_lambda / 2)

    coef, best_C = fit_soft_l1_logistic(
        train_features,
        train_target,
        sample_weight,
        n_splits=config.n_splits,
        n_cs=config.n_cs,
        random_state=config.random_state,
    )
    # The counterfactual: same instructions, no length difference.
    logits = design(np.zeros(len(win_prob)), difficulty, ones) @ coef  # (N,)
    predicted = 1 / (1 + np.exp(-logits))
    standard_error = predicted.std(ddof=1) / np.sqrt(len(predicted))
    return {
        **out,
        "length_controlled_winrate": float(predicted.mean() * 100),
        "lc_standard_error": float(standard_error * 100),
        "glm_weights": {feature: float(w) for feature, w in zip(feature_names, coef)},
        "glm_C": best_C,
    }


def download_official_files(cache_dir: str | None = None) -> LengthControlConfig:
    """Fetch df_gamed.csv and instruction_difficulty.csv from the hub (needs network)."""
    from huggingface_hub import hf_hub_download

    def fetch(filename: str) -> str:
        return hf_hub_download(
            "tatsu-lab/alpaca_eval", filename, repo_type="dataset", cache_dir=cache_dir
        )

    return LengthControlConfig(
        gamed_baselines_csv=fetch("df_gamed.csv"),
        instruction_difficulty_csv=fetch("instruction_difficulty.csv"),
    )
