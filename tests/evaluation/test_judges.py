"""Judge client against the FIXTURE judge on loopback: retries, cache, resume, secrets, cost."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from orpo.config import ConfigError

from evaluation.alpaca_eval.annotator import render_messages
from evaluation.fixture_judge import _error, _Handler
from evaluation.judges import (
    ChatRequest,
    JudgeCircuitOpen,
    JudgeClient,
    JudgeConfig,
    JudgeInterrupted,
    JudgeRequestsFailed,
    JudgmentCache,
    backoff_delay,
    cache_key,
    retry_after_seconds,
)
from tests.evaluation.cache_writer import append_records

GENERIC_REPLY_WORDS = 11  # "[FIXTURE JUDGE] This is a fixed reply from the fixture judge."


def generic_requests(n: int) -> list[ChatRequest]:
    """Requests of exactly 5 prompt words each (the fixture counts words as tokens)."""
    return [
        ChatRequest(messages=(("system", "judge fairly"), ("user", f"question number {i}")),
                    template_id="test@0")
        for i in range(n)
    ]


def test_retries_on_429_and_500_then_succeeds(start_judge, judge_config):
    """12 requests, one at a time; the server fails request numbers divisible by 3 (429,
    Retry-After 0.25 s) or else by 5 (500).

    Successes are the numbers divisible by neither: 1 2 4 7 8 11 13 14 16 17 19 22, so the 12th
    success is attempt 22. Failures: 3 6 9 12 15 18 21 -> seven 429s (15 counts as 429, checked
    first); 5 10 20 -> three 500s. Every 429 waits exactly the Retry-After; the 500s back off.
    """
    server = start_judge(fail_429_every=3, fail_500_every=5, retry_after_s=0.25)
    sleeps: list[float] = []
    config = judge_config(server, concurrency=1, backoff_initial_s=0.01, backoff_max_s=5.0)
    with JudgeClient(config, sleep=sleeps.append) as client:
        judgments = client.complete_many(generic_requests(12))

    assert all(j.error is None and j.content.startswith("[FIXTURE JUDGE]") for j in judgments)
    assert server.stats.requests == 22
    assert server.stats.statuses == {200: 12, 429: 7, 500: 3}
    assert sorted(sleeps)[-7:] == [0.25] * 7  # Retry-After honoured
    assert len(sleeps) == 10 and all(0 < s < 0.25 for s in sorted(sleeps)[:3])
    usage = client.usage
    counts = (usage.http_attempts, usage.retries, usage.completions, usage.failures)
    assert counts == (22, 10, 12, 0)


def test_backoff_is_exponential_with_full_jitter_and_capped():
    """Full jitter: retry k waits uniform in [0, min(60, 2**k)]; 50 draws of U(0, c) have a
    range under c / 2 with probability about 50 * 0.5**49, never in practice."""
    config = JudgeConfig(backoff_initial_s=1.0, backoff_max_s=60.0)
    rng = random.Random(0)
    for attempt, high in enumerate([1, 2, 4, 8]):
        delays = [backoff_delay(attempt, None, config, rng) for _ in range(50)]
        assert all(0 <= d <= high for d in delays)
        assert max(delays) - min(delays) > high / 2  # spread over the whole window
    assert all(0 <= backoff_delay(10, None, config, rng) <= 60 for _ in range(20))  # 1024 s capped
    assert backoff_delay(0, 100.0, config, rng) == 60.0  # Retry-After capped too
    assert backoff_delay(3, 0.25, config, rng) == 0.25


def test_retry_after_header_forms():
    def error(headers):
        return SimpleNamespace(response=SimpleNamespace(headers=headers))

    assert retry_after_seconds(error({"retry-after": "3"})) == 3.0
    assert retry_after_seconds(error({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    # HTTP dates have whole seconds; bound the wait by the clock read on either side of the call,
    # so a descheduled test process cannot push it out of range.
    before = time.time()
    target = math.floor(before) + 10
    in_ten_s = format_datetime(datetime.fromtimestamp(target, timezone.utc), usegmt=True)
    wait = retry_after_seconds(error({"retry-after": in_ten_s}))
    after = time.time()
    assert target - after <= wait <= target - before
    assert retry_after_seconds(error({})) is None
    assert retry_after_seconds(error({"retry-after": "soon"})) is None


def test_gives_up_after_max_retries_and_does_not_cache_failures(start_judge, judge_config):
    server = start_judge(fail_500_every=1)  # every request fails
    config = judge_config(server, max_retries=2)
    with JudgeClient(config, sleep=lambda s: None) as client:
        [judgment] = client.complete_many(generic_requests(1))
    assert judgment.content is None and judgment.error.startswith("retries exhausted")
    assert server.stats.requests == 3  # first attempt + 2 retries
    assert client.usage.failures == 1
    assert len(JudgmentCache(config.cache_path)) == 0  # a rerun will try again


class _HeldHandler(_Handler):
    """Answers only once the test sets `server.release`."""

    def _answer(self, raw, number, config):
        self.server.release.wait()
        super()._answer(raw, number, config)


class _PairedHandler(_Handler):
    """Answers only when two requests are in the server at once (a barrier of 2)."""

    def _answer(self, raw, number, config):
        self.server.pair.wait()
        super()._answer(raw, number, config)


def test_connection_errors_and_timeouts_are_retried(start_judge, judge_config):
    with socket.socket() as probe:  # a port with nothing listening: connection refused
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    server = start_judge()
    server.RequestHandlerClass, server.release = _HeldHandler, threading.Event()
    sleeps: list[float] = []
    refused = judge_config(server, base_url=f"http://127.0.0.1:{dead_port}/v1", max_retries=2)
    with JudgeClient(refused, sleep=sleeps.append) as client:
        [judgment] = client.complete_many(generic_requests(1))
    assert "APIConnectionError" in judgment.error and judgment.error.startswith("retries exhausted")
    assert len(sleeps) == 2 and client.usage.http_attempts == 3

    slow = judge_config(server, timeout_s=0.2, max_retries=1)  # the server holds every request
    try:
        with JudgeClient(slow, sleep=lambda s: None) as client:
            [judgment] = client.complete_many(generic_requests(1))
    finally:
        server.release.set()
    assert "APITimeoutError" in judgment.error and judgment.error.startswith("retries exhausted")
    assert (client.usage.http_attempts, client.usage.retries) == (2, 1)


def test_authentication_error_is_not_retried(start_judge, judge_config, monkeypatch):
    server = start_judge()
    config = judge_config(server)
    monkeypatch.setenv(config.api_key_env, "sk-wrong-key")
    with JudgeClient(config, sleep=lambda s: None) as client:
        [judgment] = client.complete_many(generic_requests(1))
    assert judgment.error.startswith("not retryable") and "401" in judgment.error
    assert server.stats.requests == 1


def test_missing_key_variable_is_reported_by_name(judge_config, start_judge, monkeypatch):
    config = judge_config(start_judge())
    monkeypatch.delenv(config.api_key_env)
    with pytest.raises(RuntimeError, match=config.api_key_env):
        JudgeClient(config)


def test_rerun_is_served_from_cache_with_zero_requests(start_judge, judge_config):
    server = start_judge(fail_429_every=4)
    config = judge_config(server)
    requests = generic_requests(6)
    with JudgeClient(config, sleep=lambda s: None) as client:
        first = client.complete_many(requests)
    requests_after_first_run = server.stats.requests
    assert server.stats.completions == 6

    with JudgeClient(config, sleep=lambda s: None) as client:
        second = client.complete_many(requests)
    assert server.stats.requests == requests_after_first_run  # zero new requests
    assert [j.content for j in second] == [j.content for j in first]
    assert all(j.from_cache for j in second) and not any(j.from_cache for j in first)
    assert client.usage.cache_hits == 6 and client.usage.http_attempts == 0


def test_cache_key_covers_model_template_inputs_and_decoding():
    request = generic_requests(1)[0]
    url = "https://api.openai.com/v1"
    base = cache_key("judge-a", request, url)
    variants = [
        cache_key("judge-b", request, url),
        cache_key("judge-a", request, "http://127.0.0.1:8000/v1"),
        cache_key("judge-a", ChatRequest(request.messages, "test@1"), url),
        cache_key("judge-a", ChatRequest((("user", "other"),), "test@0"), url),
        cache_key("judge-a", ChatRequest(request.messages, "test@0", temperature=1.0), url),
        cache_key("judge-a", ChatRequest(request.messages, "test@0", max_tokens=1), url),
        cache_key("judge-a", ChatRequest(request.messages, "test@0", top_logprobs=5), url),
    ]
    assert len({base, *variants}) == 8
    assert base == cache_key("judge-a", generic_requests(1)[0], url + "/")  # a trailing / is no other endpoint


def test_resume_after_interrupted_run_requests_only_the_missing(start_judge, judge_config):
    """The process "dies" after 3 judgments (every later call raises); a rerun of all 8
    requests then sends exactly the 5 missing ones."""
    server = start_judge()
    config = judge_config(server, concurrency=1)
    requests = generic_requests(8)
    client = JudgeClient(config)
    send_once, calls = client._send_once, []

    def dies_after_three(request, key):
        calls.append(key)
        if len(calls) > 3:
            raise KeyboardInterrupt("simulated kill")
        return send_once(request, key)

    client._send_once = dies_after_three
    with pytest.raises(KeyboardInterrupt):
        client.complete_many(requests)
    client.close()
    assert len(JudgmentCache(config.cache_path)) == 3
    assert server.stats.requests == 3

    with JudgeClient(config) as client:
        judgments = client.complete_many(requests)
    assert server.stats.requests == 3 + 5
    assert sum(j.from_cache for j in judgments) == 3 and all(j.error is None for j in judgments)


def test_truncated_last_record_is_skipped_and_refetched(start_judge, judge_config):
    """A kill mid-write leaves a partial last line: it is skipped on load, that judgment is
    requested again, and the next record starts on a fresh line."""
    server = start_judge()
    config = judge_config(server)
    requests = generic_requests(4)
    with JudgeClient(config) as client:
        client.complete_many(requests)
    path = client.cache.path
    path.write_bytes(path.read_bytes()[:-25])  # chop the end of the 4th record

    cache = JudgmentCache(path)
    assert (len(cache), cache.n_corrupt_lines) == (3, 1)
    with JudgeClient(config) as client:
        judgments = client.complete_many(requests)
    assert server.stats.requests == 4 + 1
    assert [j.from_cache for j in judgments].count(False) == 1
    reloaded = JudgmentCache(path)
    assert (len(reloaded), reloaded.n_corrupt_lines) == (4, 1)


def test_api_key_never_in_cache_logs_or_repr(start_judge, judge_config, api_key, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, including openai's and httpx's
    server = start_judge(fail_429_every=2, fail_500_every=3)
    config = judge_config(server)
    with JudgeClient(config, sleep=lambda s: None) as client:
        judgments = client.complete_many(generic_requests(5))
        shown = [repr(client), str(client), repr(config), str(client.usage_summary())]
    assert all(j.error is None for j in judgments)  # the server accepted the key
    assert client.usage.retries > 0 and "retry" in caplog.text  # logs were written
    assert api_key not in caplog.text
    assert api_key.encode() not in client.cache.path.read_bytes()
    assert not any(api_key in text for text in shown)
    assert "api_key=****" in repr(client)


def test_logprobs_of_first_token_are_exposed(start_judge, judge_config):
    """Fixture: P(m) = sigmoid((words_m - words_M) / 20). With 40 vs 20 words,
    log P(m) = log sigmoid(1) = -0.313262, log P(M) = log sigmoid(-1) = -1.313262; the
    fixture also lists `Both` at -20."""
    server = start_judge()
    messages = render_messages("Say something.", "word " * 40, "word " * 20)
    request = ChatRequest(messages, "test@0", max_tokens=1, temperature=1.0, top_logprobs=3)
    with JudgeClient(judge_config(server)) as client:
        [judgment] = client.complete_many([request])
    assert judgment.content == "m"
    [first_position] = judgment.top_logprobs
    assert first_position["m"] == pytest.approx(-0.3132616875, abs=1e-9)
    assert first_position["M"] == pytest.approx(-1.3132616875, abs=1e-9)
    assert first_position["Both"] == -20.0
    assert math.exp(first_position["m"]) + math.exp(first_position["M"]) == pytest.approx(1.0)

    with JudgeClient(judge_config(server)) as client:  # logprobs survive the cache
        [cached] = client.complete_many([request])
    assert cached.from_cache and cached.top_logprobs == judgment.top_logprobs


def test_token_and_cost_accounting_with_cache_hits_apart(start_judge, judge_config):
    """3 requests x (5 prompt words, 11 reply words) = 15 prompt + 33 completion tokens.
    At $2 / $6 per 1M: (15 * 2 + 33 * 6) / 1e6 = 228e-6 USD. The rerun pays 0 and reports
    228e-6 saved."""
    server = start_judge()
    prices = dict(usd_per_million_prompt_tokens=2.0, usd_per_million_completion_tokens=6.0)
    config = judge_config(server, **prices)
    with JudgeClient(config) as client:
        client.complete_many(generic_requests(3))
    summary = client.usage_summary()
    assert (summary["prompt_tokens"], summary["completion_tokens"]) == (15, 3 * GENERIC_REPLY_WORDS)
    assert summary["cost_usd"] == pytest.approx(228e-6)

    with JudgeClient(config) as client:
        client.complete_many(generic_requests(3))
    summary = client.usage_summary()
    assert summary["cost_usd"] == 0 and summary["cache_hits"] == 3
    assert summary["cost_saved_by_cache_usd"] == pytest.approx(228e-6)


def test_concurrency_limit_and_duplicate_requests(start_judge, judge_config):
    """Each request waits in the server for a second one, so the 8 are answered in pairs only if
    two are in flight at once; a generous barrier timeout turns a lost pair into a failure."""
    server = start_judge()
    server.RequestHandlerClass, server.pair = _PairedHandler, threading.Barrier(2, timeout=300)
    requests = generic_requests(8)
    with JudgeClient(judge_config(server, concurrency=2, cache_path=None)) as client:
        judgments = client.complete_many(requests + requests[:2])  # two duplicates: sent once each
    assert all(j.error is None for j in judgments)
    assert server.stats.max_in_flight == 2
    assert server.stats.requests == 8


def test_fixture_judge_cli_serves_until_stopped():
    """The quickstart starts the fixture judge as `python -m evaluation.fixture_judge --port 0`."""
    repo_root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "evaluation.fixture_judge", "--port", "0", "--fail-429-every", "2"],
        cwd=repo_root, stdout=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 300)  # returns once it prints
        assert ready, "the fixture judge did not print its address"
        line = process.stdout.readline()
        assert "FIXTURE JUDGE" in line
        base_url = re.search(r"http://127\.0\.0\.1:\d+/v1", line).group(0)
        config = JudgeConfig(base_url=base_url, model="fixture-judge", api_key_env=None,
                             backoff_initial_s=0.001, progress=False)
        with JudgeClient(config) as client:
            judgments = client.complete_many(generic_requests(2))
        assert all(j.response_model == "fixture-judge" for j in judgments)
        assert client.usage.retries == 1  # request 2 got the injected 429
    finally:
        process.terminate()
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- failures, limits, stop


def test_permanent_429_trips_the_breaker_after_n_consecutive(start_judge, judge_config):
    """Every request answers 429 with Retry-After 30 (capped to 0.05 s by backoff_max_s). With
    breaker_consecutive_429=5 the run stops at the 5th 429: at most 5 + (concurrency - 1) = 8
    requests reach the server, not 6 items x 9 attempts = 54, and nothing is cached."""
    server = start_judge(fail_429_every=1, retry_after_s=30)
    config = judge_config(server, concurrency=4, max_retries=8, backoff_max_s=0.05,
                          breaker_consecutive_429=5)
    started = time.monotonic()
    with JudgeClient(config) as client, pytest.raises(JudgeCircuitOpen, match="5 consecutive 429s") as info:
        client.complete_many(generic_requests(6))
    assert time.monotonic() - started < 30  # generous: the point is the request count
    assert 5 <= server.stats.requests <= 8 and server.stats.statuses == {429: server.stats.requests}
    assert len(info.value.failed) == 6 and config.cache_path in str(info.value)
    assert len(JudgmentCache(config.cache_path)) == 0


def test_insufficient_quota_stops_at_once(start_judge, judge_config):
    server = start_judge(fail_429_every=1, code_429="insufficient_quota")
    config = judge_config(server, concurrency=1, breaker_consecutive_429=None)
    with JudgeClient(config) as client, pytest.raises(JudgeCircuitOpen, match="insufficient_quota"):
        client.complete_many(generic_requests(5))
    assert server.stats.requests == 1  # retrying cannot buy quota


def test_retry_budget_is_shared_by_the_run(start_judge, judge_config):
    """Every request answers 500; max_total_retries=3: attempt 1 and retries 1-3 are sent, the
    4th retry exceeds the budget: 4 requests, although one item alone may retry 8 times."""
    server = start_judge(fail_500_every=1)
    config = judge_config(server, concurrency=1, max_retries=8, max_total_retries=3)
    with JudgeClient(config) as client, pytest.raises(JudgeCircuitOpen, match="retry budget"):
        client.complete_many(generic_requests(3))
    assert server.stats.requests == 4


class _PauseHandler(_Handler):
    """Request 1 waits until request 2 is in the server too, then gets a 429 (Retry-After 1 s).
    Request 2 is held until the client has started its shared pause, then answered; every later
    request is answered at once. (Polls with a 60 s deadline: order, not timing, is tested.)"""

    def _answer(self, raw, number, config):
        deadline = time.monotonic() + 60
        if number == 1:
            while self.server.stats.requests < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            self._send(429, _error("rate limited"), {"Retry-After": "1"})
            return
        if number == 2:
            while self.server.client.limits.resume_at == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
        super()._answer(raw, number, config)


def test_a_429_pauses_every_thread(start_judge, judge_config):
    """Two threads. Thread A's request gets a 429 (Retry-After 1 s); thread B's request is in
    the server meanwhile and succeeds once A's pause has begun. B's next request must then wait
    for the shared pause: no request reaches the server before `resume_at`. (Before the shared
    pause, B sent request 3 at once.) The wait comes from the client's own clock, so a slow
    machine can only make requests later, never earlier."""
    server = start_judge()
    server.RequestHandlerClass = _PauseHandler
    config = judge_config(server, concurrency=2, backoff_initial_s=0.01, backoff_max_s=5.0)
    with JudgeClient(config) as client:
        server.client = client
        judgments = client.complete_many(generic_requests(3))
    assert all(j.error is None for j in judgments)
    assert server.stats.requests == 4 and server.stats.statuses == {429: 1, 200: 3}
    resume_at = client.limits.resume_at
    assert server.stats.arrivals[1] < resume_at  # request 2 was in the server before the pause
    during_pause = [t for t in server.stats.arrivals[2:] if t < resume_at]
    assert during_pause == []


def test_stop_event_ends_retry_loops_promptly(start_judge, judge_config):
    """Every request answers 429 with Retry-After 30: after the first one every thread waits 30 s
    (its own backoff or the shared pause). Setting the stop event (what Ctrl-C and fatal errors do) ends the call at once: no further
    request is sent, nothing is cached, and the call raises JudgeInterrupted."""
    server = start_judge(fail_429_every=1, retry_after_s=30)
    config = judge_config(server, concurrency=4, backoff_max_s=60, breaker_consecutive_429=None)
    client = JudgeClient(config)

    def interrupt_when_all_wait():
        deadline = time.monotonic() + 60
        while client.usage.retries < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        client.interrupt()

    helper = threading.Thread(target=interrupt_when_all_wait)
    helper.start()
    started = time.monotonic()
    with pytest.raises(JudgeInterrupted):
        client.complete_many(generic_requests(8))
    helper.join()
    assert time.monotonic() - started < 20  # the waits were 30 s each
    assert 1 <= server.stats.requests <= 4  # nothing sent after the first 429's pause began
    client.close()
    assert len(JudgmentCache(config.cache_path)) == 0


def test_ctrl_c_in_the_main_thread_returns_promptly(start_judge, judge_config):
    """A real SIGINT while the threads sleep out a 30 s Retry-After: KeyboardInterrupt comes out
    of complete_many at once and the worker threads end soon after (they wait on the stop event)."""
    server = start_judge(fail_429_every=1, retry_after_s=30)
    config = judge_config(server, concurrency=4, backoff_max_s=60, breaker_consecutive_429=None)
    client = JudgeClient(config)

    def ctrl_c_when_all_wait():
        deadline = time.monotonic() + 60
        while client.usage.retries < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=ctrl_c_when_all_wait)
    helper.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        client.complete_many(generic_requests(8))
    helper.join()
    assert time.monotonic() - started < 20
    assert client.limits.stop.is_set() and 1 <= server.stats.requests <= 4
    client.close()


class _FailMarkedHandler(_Handler):
    """While `server.failing`, prompts containing FAILME get a 400 (not retryable)."""

    def _answer(self, raw, number, config):
        if self.server.failing and b"FAILME" in raw:
            self._send(400, _error("bad request"))
            return
        super()._answer(raw, number, config)


def test_failed_requests_fail_the_evaluation_and_a_rerun_requests_only_them(
        start_judge, judge_config, tmp_path, alpaca_reference_path):
    """6 AlpacaEval items, 2 of them marked to fail. The first run raises JudgeRequestsFailed
    (so pipelines.run marks the stage failed) after caching the 4 successes; the rerun sends
    exactly the 2 failed ones and succeeds."""
    from evaluation.alpaca_eval import AlpacaEvalConfig, evaluate

    references = json.loads(alpaca_reference_path.read_text())[:6]
    outputs = [{"instruction": r["instruction"],
                "output": r["output"] + (" FAILME" if i in (1, 4) else " extra words")}
               for i, r in enumerate(references)]
    server = start_judge()
    server.RequestHandlerClass, server.failing = _FailMarkedHandler, True
    config = AlpacaEvalConfig(reference_outputs=str(alpaca_reference_path),
                              judge=judge_config(server, cache_path=None), allow_subset=True)
    with pytest.raises(JudgeRequestsFailed, match=r"2 of 6 judge request\(s\) failed") as info:
        evaluate(outputs, "toy-model", config, output_dir=tmp_path / "ae")
    assert "400" in str(info.value) and "judge_cache.jsonl" in str(info.value)
    assert server.stats.requests == 6
    assert len(JudgmentCache(tmp_path / "ae" / "judge_cache.jsonl")) == 4  # failures not cached
    assert not (tmp_path / "ae" / "summary.json").exists()

    server.failing = False
    result = evaluate(outputs, "toy-model", config, output_dir=tmp_path / "ae")
    assert server.stats.requests == 6 + 2
    assert result.summary["usage"]["cache_hits"] == 4 and result.summary["n_total"] == 6


def test_endpoint_is_part_of_the_cache_key(start_judge, judge_config):
    """The same prompt to two servers is two requests, even through one cache file."""
    first, second = start_judge(), start_judge()
    request = generic_requests(1)
    for server in (first, second, first):
        with JudgeClient(judge_config(server)) as client:
            client.complete_many(request)
    assert (first.stats.requests, second.stats.requests) == (1, 1)


def test_two_processes_share_one_cache_without_torn_lines(tmp_path):
    """Two processes append 300 records of 8 kB each while this one keeps loading the file:
    with the lock no load ever sees a partial line, and every record arrives whole."""
    path = str(tmp_path / "cache.jsonl")
    context = multiprocessing.get_context("fork")  # the child only runs already-imported code
    writers = [context.Process(target=append_records, args=(path, w, 300, 8_000))
               for w in (0, 1)]
    for process in writers:
        process.start()
    loads = 0
    while any(process.is_alive() for process in writers) or loads == 0:
        assert JudgmentCache(path).n_corrupt_lines == 0
        loads += 1
        time.sleep(0.01)  # leave the CPU to the writers
    for process in writers:
        process.join()
        assert process.exitcode == 0
    final = JudgmentCache(path)
    assert len(final) == 600 and final.n_corrupt_lines == 0
    assert all(r["content"] == r["key"][0] * 8_000 for r in final._records.values())


@pytest.mark.parametrize("settings, message", [
    (dict(base_url="https://proxy.example.com/v1"), "must be set explicitly"),
    (dict(base_url="http://api.openai.com/v1"), "must be set explicitly"),
    (dict(base_url="http://judge.example.com/v1", api_key_env="JUDGE_KEY"), "unencrypted"),
    (dict(base_url="http://10.0.0.5:8000/v1", api_key_env="JUDGE_KEY"), "unencrypted"),
    (dict(base_url="judge.example.com", api_key_env=None), "http"),
])
def test_key_rules_refuse_to_send_a_key_where_it_must_not_go(settings, message):
    with pytest.raises(ConfigError, match=message) as info:
        JudgeConfig(**settings)
    assert "judge." in str(info.value)


@pytest.mark.parametrize("settings, variable", [
    (dict(), "OPENAI_API_KEY"),  # OpenAI's endpoint: the default key
    (dict(base_url="https://proxy.example.com/v1", api_key_env="PROXY_KEY"), "PROXY_KEY"),
    (dict(base_url="http://127.0.0.1:8000/v1", api_key_env="LOCAL_KEY"), "LOCAL_KEY"),
    (dict(base_url="http://localhost:8000/v1", api_key_env="LOCAL_KEY"), "LOCAL_KEY"),
    (dict(base_url="http://[::1]:8000/v1", api_key_env="LOCAL_KEY"), "LOCAL_KEY"),
    (dict(base_url="http://judge.example.com/v1", api_key_env=None), None),  # keyless
])
def test_key_rules_allow_openai_explicit_keys_loopback_and_keyless(settings, variable):
    assert JudgeConfig(**settings).key_env() == variable


def test_run_configs_with_judges_still_load():
    """The fixture judge of pipelines.run and configs/evaluate_tiny.yaml: loopback, keyless."""
    from orpo.config import load_config
    from pipelines.config import Config
    from pipelines.run import evaluation_config

    cfg = load_config(Config, "configs/evaluate_tiny.yaml")
    assert cfg.evaluation.judge.key_env() is None
    quickstart = load_config(Config, "configs/quickstart.yaml")
    evaluated = evaluation_config(quickstart, quickstart.methods[0], Path("runs/x"), "http://127.0.0.1:1/v1")
    assert evaluated.evaluation.judge.key_env() is None
    with pytest.raises(ConfigError, match="api_key_env"):
        load_config(Config, "configs/evaluate_tiny.yaml",
                    ["evaluation.judge.api_key_env=auto"])


def test_evaluation_stage_fails_on_judge_errors_and_rerun_sends_only_those(
        start_judge, judge_config, tmp_path, alpaca_reference_path, monkeypatch):
    """pipelines.evaluate with generation stubbed out (4 AlpacaEval answers on disk, 1 marked to
    fail): the stage raises, so pipelines.run's manifest marks it failed, and writes no summary;
    the rerun sends 1 request and writes both summaries."""
    import pipelines.evaluate as stage
    from orpo.config import load_config
    from pipelines.config import Config

    references = json.loads(alpaca_reference_path.read_text())[:4]
    generations = tmp_path / "alpaca.jsonl"
    generations.write_text("".join(
        json.dumps({"instruction": r["instruction"], "output": r["output"] + (" FAILME" if i == 2 else " more")})
        + "\n" for i, r in enumerate(references)))
    monkeypatch.setattr(stage, "generate", lambda cfg, out: {"alpaca_eval": generations})
    monkeypatch.setattr(stage, "resolve_model_path", lambda model, out: "toy-model")
    server = start_judge()
    server.RequestHandlerClass, server.failing = _FailMarkedHandler, True
    judge = judge_config(server)
    cfg = load_config(Config, "configs/evaluate_tiny.yaml", [
        f"output_dir={tmp_path / 'eval'}", f"evaluation.judge.base_url={judge.base_url}",
        f"evaluation.judge.api_key_env={judge.api_key_env}",
        f"evaluation.alpaca_eval.reference_outputs={alpaca_reference_path}"])
    with pytest.raises(JudgeRequestsFailed, match=r"1 of 4"):
        stage.evaluate(cfg)
    assert not (tmp_path / "eval" / "summary.json").exists()
    assert server.stats.requests == 4

    server.failing = False
    summary = stage.evaluate(cfg)
    assert server.stats.requests == 5 and summary["alpaca_eval"]["n_total"] == 4
    assert (tmp_path / "eval" / "summary.json").exists()


def test_the_product_never_imports_the_fixture_judge():
    """A test double stays out of the product: the metrics, the judge client and the stage entry
    points load without `evaluation.fixture_judge` (only `pipelines.run` starts it, lazily, when a
    config sets `evaluation.fixture_judge`)."""
    code = (
        "import sys, evaluation.judges, evaluation.mt_bench, evaluation.alpaca_eval, "
        "evaluation.alpaca_eval.metrics, pipelines.evaluate, pipelines.run; "
        "print('evaluation.fixture_judge' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == "False"
