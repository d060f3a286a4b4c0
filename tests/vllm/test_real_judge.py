"""The judges against a real OpenAI-compatible server: vLLM's, started by
``python -m evaluation.serve_judge`` with a tiny random model as the judge.

The tiny judge (``judge_model_dir`` in conftest) is rigged to answer AlpacaEval's label ``m``
with ``M`` close behind, so its pairwise verdicts are logprob-weighted preferences; its MT-Bench
judgments hold no ``[[rating]]``, which the product counts as unparseable and excludes. The
records are the ones the fixture judge gives. Requests are counted on the server (``vllm:request_success_total`` in its
Prometheus ``/metrics``) and, per prompt, by a test-only proxy in front of it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from evaluation import alpaca_eval, mt_bench
from evaluation.alpaca_eval.annotator import render_messages
from evaluation.fixture_judge import FixtureJudgeConfig, serve_fixture_judge
from evaluation.judges import JudgeConfig, JudgeRequestsFailed
from evaluation.serve_judge import free_port
from evaluation.settings import AlpacaEvalConfig, MTBenchConfig
from tests.vllm.judge_proxy import judge_proxy

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared" / "benchmarks"
JUDGE = "tiny-judge"
STATUSES = {"ok", "backup_pattern", "unparseable"}  # never request_error once the run completes


class JudgeServer:
    """``python -m evaluation.serve_judge`` in its own process group, on a fixed port."""

    def __init__(self, model: Path, port: int):
        command = [sys.executable, "-m", "evaluation.serve_judge", "--model", str(model), "--port", str(port),
                   "--served-model-name", JUDGE, "--dtype", "float32", "--max-model-len", "8192",
                   "--", "--enforce-eager"]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True,
                                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        line = self.process.stdout.readline()  # blocks until the server answers (or exits)
        assert line.startswith("base_url: "), f"serve_judge said {line!r} (exit {self.process.poll()})"
        self.base_url = line.split(": ", 1)[1].strip()
        assert self.base_url == f"http://127.0.0.1:{port}/v1"

    def served_requests(self) -> int:
        """``vllm:request_success_total`` over every finish reason."""
        metrics_url = self.base_url.removesuffix("/v1") + "/metrics"
        with urllib.request.urlopen(metrics_url, timeout=60) as response:
            lines = response.read().decode().splitlines()
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in lines
                       if line.startswith("vllm:request_success_total{")))

    def kill(self) -> None:
        """Kill the whole server (wrapper, API server, engine) at once: a crash, not a stop."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


@pytest.fixture(scope="module")
def judge_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(judge_model_dir, judge_port):
    started = JudgeServer(judge_model_dir, judge_port)
    yield started
    if started.process.poll() is None:
        started.kill()


def judge_config(base_url: str, cache: Path, **overrides) -> JudgeConfig:
    settings = dict(base_url=base_url, model=JUDGE, api_key_env=None, concurrency=4, max_retries=3,
                    backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=120.0, cache_path=str(cache),
                    progress=False)
    return JudgeConfig(**{**settings, **overrides})


def alpaca_outputs(count: int) -> list[dict]:
    references = json.loads((SHARED / "alpaca_eval" / "gpt4_1106_preview_outputs.json").read_text())[:count]
    # Never the reference itself (a tie, which costs no judge call).
    return [{"instruction": r["instruction"], "output": " ".join(r["output"].split()[: 20 + 7 * i]) + " That is all."}
            for i, r in enumerate(references)]


def alpaca_config(judge: JudgeConfig) -> AlpacaEvalConfig:
    return AlpacaEvalConfig(reference_outputs=str(SHARED / "alpaca_eval" / "gpt4_1106_preview_outputs.json"),
                            judge=judge, allow_subset=True)


def mt_bench_config(judge: JudgeConfig, question_ids: tuple[int, ...]) -> MTBenchConfig:
    folder = SHARED / "mt_bench"
    return MTBenchConfig(questions=str(folder / "question.jsonl"), judge_prompts=str(folder / "judge_prompts.jsonl"),
                         reference_answers=str(folder / "reference_answer_gpt-4.jsonl"), judge=judge,
                         question_ids=question_ids, max_tokens=24)


def mt_bench_answers(question_ids: tuple[int, ...]) -> list[dict]:
    return [{"question_id": q, "turns": [f"First answer to {q}, " * 3, f"Second answer to {q}."]}
            for q in question_ids]


@pytest.fixture(autouse=True)
def shared_benchmarks():
    if not SHARED.exists():
        pytest.skip(f"shared benchmarks absent: {SHARED}")


def test_pairwise_and_single_grading_on_a_real_server_and_reruns_cost_nothing(server, tmp_path):
    """AlpacaEval (logprob-weighted pairwise) and MT-Bench (single grading, reference-based math
    included) through `evaluation.judges`: the records the fixture judge gives, every request
    served once, and a rerun sends zero requests to the server."""
    questions = (81, 101, 111)
    served_before = server.served_requests()
    judge = judge_config(server.base_url, tmp_path / "cache.jsonl")
    alpaca = alpaca_eval.evaluate(alpaca_outputs(6), "toy", alpaca_config(judge), output_dir=tmp_path / "ae")
    grades = mt_bench.evaluate(mt_bench_answers(questions), "toy", mt_bench_config(judge, questions),
                               output_dir=tmp_path / "mt")
    sent = server.served_requests() - served_before
    assert sent == 6 + 2 * len(questions) == alpaca.summary["usage"]["completions"] + grades.summary["usage"]["completions"]

    # The same records as from the fixture judge (same fields, same summary keys).
    with serve_fixture_judge(FixtureJudgeConfig()) as fixture:
        fixture_judge = judge_config(fixture.base_url, tmp_path / "fixture_cache.jsonl", model="fixture-judge")
        fixture_alpaca = alpaca_eval.evaluate(alpaca_outputs(6), "toy", alpaca_config(fixture_judge))
        fixture_grades = mt_bench.evaluate(mt_bench_answers(questions), "toy", mt_bench_config(fixture_judge, questions))
    assert [set(a) for a in alpaca.annotations] == [set(a) for a in fixture_alpaca.annotations]
    assert set(alpaca.summary) == set(fixture_alpaca.summary)
    assert [set(s) for s in grades.scores] == [set(s) for s in fixture_grades.scores]
    assert set(grades.summary) == set(fixture_grades.summary)

    # Logprob weighting: every verdict came with the top-5 of its one token; a verdict whose top-5
    # holds neither label is unparseable, counted, and not scored.
    cached = [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    pairwise = [r for r in cached if r["decoding"]["top_logprobs"] == 5]
    assert len(pairwise) == 6 and all(len(r["top_logprobs"]) == 1 and len(r["top_logprobs"][0]) == 5 for r in pairwise)
    # The shown first output wins with P = 1 / (1 + exp(logprob(M) - logprob(m))), from the server's
    # own log-probs; the swap turns it into the model's preference.
    by_messages = {json.dumps(r["messages"]): r["top_logprobs"][0] for r in pairwise}
    for annotation in alpaca.annotations:
        assert annotation["judge_model"] == JUDGE and annotation["parse_status"] == "ok"
        assert annotation["preference_source"] == "logprobs"
        first, second = annotation["output_1"], annotation["output_2"]
        if annotation["is_switched_outputs"]:
            first, second = second, first
        top = by_messages[json.dumps([list(m) for m in render_messages(annotation["instruction"], first, second)])]
        shown = 2 - 1 / (1 + math.exp(top["M"] - top["m"]))
        expected = 3 - shown if annotation["is_switched_outputs"] else shown
        assert annotation["preference"] == pytest.approx(expected, abs=1e-9)
    assert alpaca.summary["n_unparseable"] == 0 and alpaca.summary["n_request_errors"] == 0
    assert all(s["parse_status"] in STATUSES and s["judge_model"] == JUDGE for s in grades.scores)
    assert grades.summary["n_request_errors"] == 0
    assert grades.summary["n_unparseable"] == sum(s["score"] is None for s in grades.scores) == 2 * len(questions)
    assert all(s["judgment"].startswith("m") for s in grades.scores)
    assert "judge is tiny-judge" in " ".join(grades.summary["comparability"])
    print(f"\nreal judge: {sent} requests served; AlpacaEval win rate {alpaca.summary['win_rate']:.1f} "
          f"(6 weighted), MT-Bench unparseable {grades.summary['n_unparseable']}/{2 * len(questions)}")

    served_before = server.served_requests()
    rerun_alpaca = alpaca_eval.evaluate(alpaca_outputs(6), "toy", alpaca_config(judge), output_dir=tmp_path / "ae")
    rerun_grades = mt_bench.evaluate(mt_bench_answers(questions), "toy", mt_bench_config(judge, questions),
                                     output_dir=tmp_path / "mt")
    assert server.served_requests() - served_before == 0
    assert rerun_alpaca.annotations == [{**a, "from_cache": True} for a in alpaca.annotations]
    assert rerun_grades.scores == grades.scores
    print("real judge rerun: 0 requests served")


def test_429_500_and_timeouts_from_a_proxy_are_retried(server, tmp_path):
    """A proxy answers 429, 500, and stalls past the client's timeout on the first requests; the
    configured retries get every judgment, each answered by the server exactly once."""
    questions = (82, 83, 84)
    faults = {1: "429", 2: "500", 3: "stall", 4: "429", 5: "500"}
    # The stall outlasts the client's timeout; real answers (a tiny model) come well within it.
    with judge_proxy(server.base_url, faults=faults, stall_s=40.0) as proxy:
        judge = judge_config(proxy.base_url, tmp_path / "cache.jsonl", timeout_s=30.0, concurrency=2,
                             max_retries=5)
        served_before = server.served_requests()
        grades = mt_bench.evaluate(mt_bench_answers(questions), "toy", mt_bench_config(judge, questions))
        assert server.served_requests() - served_before == 2 * len(questions)
    usage = grades.summary["usage"]
    assert dict(proxy.injected) == {"429": 2, "500": 2, "stall": 1}
    assert usage["retries"] == 5 and usage["failures"] == 0 and usage["completions"] == 6
    assert sorted(proxy.answered.values()) == [1] * 6
    assert all(s["parse_status"] in STATUSES for s in grades.scores)
    print(f"\nreal judge behind faults: {dict(proxy.injected)} injected, {usage['retries']} retries, "
          f"{sum(proxy.answered.values())} requests served")


def test_killed_server_restarted_completes_without_asking_twice(server, judge_model_dir, judge_port, tmp_path):
    """Kill the server (the whole process group) mid-run: the run fails with what it got cached;
    restart it on the same port (the endpoint is in the cache key) and rerun: the run completes,
    and the proxy saw no prompt answered twice. Then SIGTERM stops serve_judge cleanly."""
    questions = (91, 92, 93, 94, 95, 96, 97, 98)
    cache = tmp_path / "cache.jsonl"
    with judge_proxy(server.base_url) as proxy:
        judge = judge_config(proxy.base_url, cache, concurrency=1, max_retries=2)
        config = mt_bench_config(judge, questions)
        failed: list[BaseException] = []

        def first_run() -> None:
            try:
                mt_bench.evaluate(mt_bench_answers(questions), "toy", config)
            except JudgeRequestsFailed as error:
                failed.append(error)

        runner = threading.Thread(target=first_run)
        runner.start()
        deadline = time.monotonic() + 600
        while sum(proxy.answered.values()) < 5 and time.monotonic() < deadline and runner.is_alive():
            time.sleep(0.2)
        server.kill()
        runner.join(timeout=600)
        assert failed, "the run should fail once the server is gone"
        answered_first = sum(proxy.answered.values())
        cached_first = len(cache.read_text().splitlines())
        assert 5 <= answered_first == cached_first < 2 * len(questions)

        restarted = JudgeServer(judge_model_dir, judge_port)
        try:
            grades = mt_bench.evaluate(mt_bench_answers(questions), "toy", config)
            assert restarted.served_requests() == 2 * len(questions) - cached_first
        finally:
            assert restarted.stop() == 0  # SIGTERM: serve_judge stops the server and exits 0
    assert len(grades.scores) == 2 * len(questions) and grades.summary["n_request_errors"] == 0
    assert sorted(proxy.answered.values()) == [1] * (2 * len(questions))  # no judgment asked twice
    with pytest.raises(OSError):  # the port is free again: nothing left serving
        urllib.request.urlopen(restarted.base_url + "/models", timeout=10)
    print(f"\nkill/restart: {answered_first} judgments before the kill, "
          f"{2 * len(questions) - cached_first} after the restart, none twice")
