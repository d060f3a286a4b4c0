"""Shared fixtures: the tiny model and tokenizer, built once per session; the shared benchmark data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
# Every Ray these tests start waits this long for its dashboard (state and job APIs) to come up, then goes on
# without it; the 60 s default is short for a loaded 2-core machine. A budget: the wait ends when it is up.
os.environ.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "600")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = REPO_ROOT.parent / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from orpo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
