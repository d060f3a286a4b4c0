"""FIXTURE judge: a deterministic, OpenAI-compatible stand-in for an LLM judge. NOT A REAL JUDGE.

It serves `POST /v1/chat/completions` on 127.0.0.1 so tests and the quickstart demo can run the
judging pipelines offline. Its verdicts are a plain function of the prompt, not an evaluation:

- AlpacaEval 2.0 pairwise prompt (outputs labelled `m` / `M`): prefers the output with more
  words. With logprobs requested, P(m) = sigmoid((words_m - words_M) / 20); the generated token
  is the likelier label.
- MT-Bench single-answer prompt (`[[rating]]` format): `Rating: [[r]]` with
  r = min(10, 1 + words // 10), where words counts the graded answer (turn 2 in multi-turn).
- Anything else: a fixed reply.

Every response is labelled: model `fixture-judge`, content prefixed `[FIXTURE JUDGE]`.

Fault injection (all deterministic): every Nth request answers 429 with Retry-After, every Mth
answers 500, and prompts whose hash is divisible by K get a malformed verdict (no `[[x]]`,
garbage, or a pairwise answer with neither label). `stats` counts requests for cache tests.

Python: `with serve_fixture_judge(FixtureJudgeConfig(...)) as judge: judge.base_url`.
CLI: `python -m evaluation.fixture_judge --port 0` prints the base URL and serves until Ctrl-C.

A test double, outside the product's import graph: the benchmark modules know only its served
name (`evaluation.settings.FIXTURE_JUDGE_MODEL`), and the one product module that loads it is
`pipelines.run`, lazily, when a config sets `evaluation.fixture_judge: true` (the quickstart).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from evaluation.settings import FIXTURE_JUDGE_MODEL as FIXTURE_MODEL_NAME

FIXTURE_LABEL = "[FIXTURE JUDGE]"
PAIRWISE_SCALE_WORDS = 20.0
"""Word difference that moves P(m) from 0.5 to sigmoid(1) ~ 0.73."""

_ALPACA_OUTPUT = re.compile(r'"output": """(.*?)"""\n    }', re.DOTALL)
_MT_SINGLE_ANSWER = re.compile(
    r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End of Assistant's Answer\]", re.DOTALL
)
_MT_LAST_ANSWER = re.compile(
    r"### Assistant A:\n((?:(?!### Assistant A:\n).)*)\n\n<\|The End of Assistant A's Conversation",
    re.DOTALL,
)


@dataclass
class FixtureJudgeConfig:
    """Faults to inject; all default to off."""

    fail_429_every: int = 0
    """Answer every Nth request with 429 + Retry-After (0: never)."""
    fail_500_every: int = 0
    """Answer every Nth request with 500 (0: never)."""
    retry_after_s: float | None = 0.0
    """Retry-After sent with 429s (None: no header)."""
    code_429: str | None = None
    """`error.code` of the 429 body, e.g. `insufficient_quota` (OpenAI's "no credit left")."""
    malformed_every: int = 0
    """Prompts whose hash is divisible by N get a malformed verdict (0: never)."""
    latency_s: float = 0.0
    """Sleep before answering, to exercise concurrency."""
    required_api_key: str | None = None
    """When set, requests without `Authorization: Bearer <key>` get 401."""


@dataclass
class FixtureStats:
    """What the server saw; read it to check that cache hits cost no requests."""

    requests: int = 0
    """POSTs to /chat/completions, faults included."""
    completions: int = 0
    """Requests answered with 200."""
    malformed: int = 0
    """Verdicts deliberately malformed (served with 200)."""
    statuses: Counter = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    arrivals: list = field(default_factory=list)
    """`time.monotonic()` at which each request arrived, in request-number order."""


# --------------------------------------------------------------------------- verdicts


def word_count(text: str) -> int:
    return len(text.split())


def fixture_rating(answer: str) -> int:
    """The fixture's MT-Bench rating of an answer: 1 + words // 10, capped at 10."""
    return min(10, 1 + word_count(answer) // 10)


def fixture_prob_first(output_m: str, output_M: str) -> float:
    """The fixture's probability that the output labelled `m` is better (longer wins)."""
    difference = word_count(output_m) - word_count(output_M)
    return 1.0 / (1.0 + math.exp(-difference / PAIRWISE_SCALE_WORDS))


def _prompt_hash(messages: list[dict[str, Any]]) -> int:
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def _pairwise(user_prompt: str, malformed: bool) -> tuple[str, list[tuple[str, float]]]:
    outputs = _ALPACA_OUTPUT.findall(user_prompt)
    if malformed or len(outputs) != 2:
        return "FIX", [("FIX", -0.05), ("Both", -3.5), ("The", -4.0)]
    p_m = fixture_prob_first(outputs[0], outputs[1])
    logprob_m = math.log(p_m) if p_m > 0 else -1e4
    logprob_M = math.log1p(-p_m) if p_m < 1 else -1e4
    alternatives = sorted(
        [("m", logprob_m), ("M", logprob_M), ("Both", -20.0)], key=lambda t: -t[1]
    )
    return alternatives[0][0], alternatives


def _rating(user_prompt: str, prompt_hash: int, malformed: bool) -> str:
    if malformed:
        garbage = [
            f"{FIXTURE_LABEL} I cannot rate this answer.",
            f"{FIXTURE_LABEL} Rating: ten out of ten ?!#",
        ]
        return garbage[prompt_hash % len(garbage)]
    match = _MT_LAST_ANSWER.search(user_prompt) or _MT_SINGLE_ANSWER.search(user_prompt)
    answer = match.group(1) if match else ""
    return (
        f"{FIXTURE_LABEL} Deterministic test double, not a real evaluation. The graded answer "
        f"has {word_count(answer)} words. Rating: [[{fixture_rating(answer)}]]"
    )


def fixture_completion(
    body: dict[str, Any], config: FixtureJudgeConfig, request_number: int
) -> tuple[dict[str, Any], bool]:
    """The chat-completion JSON the fixture returns for a request body, and whether its verdict
    was deliberately malformed."""
    messages = body.get("messages", [])
    user_prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    all_text = "\n".join(str(m.get("content", "")) for m in messages)
    prompt_hash = _prompt_hash(messages)
    malformed = config.malformed_every > 0 and prompt_hash % config.malformed_every == 0

    alternatives: list[tuple[str, float]] | None = None
    if '"model_identifier": "m"' in user_prompt:
        content, alternatives = _pairwise(user_prompt, malformed)
    elif "[[rating]]" in all_text:
        content = _rating(user_prompt, prompt_hash, malformed)
    else:
        content, malformed = f"{FIXTURE_LABEL} This is a fixed reply from the fixture judge.", False

    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "stop",
        "logprobs": None,
    }
    top_k = int(body.get("top_logprobs") or 0)
    if body.get("logprobs"):
        alternatives = alternatives or [(content.split()[0] if content else "", -0.01)]
        top = [
            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives[:top_k]
        ]
        first = alternatives[0]
        choice["logprobs"] = {
            "content": [
                {
                    "token": first[0],
                    "logprob": first[1],
                    "bytes": list(first[0].encode()),
                    "top_logprobs": top,
                }
            ]
        }
    prompt_tokens = word_count(all_text)
    completion_tokens = max(1, word_count(content))
    payload = {
        "id": f"fixture-{request_number}",
        "object": "chat.completion",
        "created": 0,
        "model": FIXTURE_MODEL_NAME,
        "system_fingerprint": "fixture",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return payload, malformed


# --------------------------------------------------------------------------- server


class FixtureJudgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: FixtureJudgeConfig, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.config = config
        self.stats = FixtureStats()
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out hang up mid-answer; that is expected here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reset_stats(self) -> None:
        with self.lock:
            self.stats = FixtureStats()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two small writes; with Nagle on, keep-alive requests stall
    # ~40 ms each on the peer's delayed ACK.
    disable_nagle_algorithm = True
    server: FixtureJudgeServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet, and never echo request headers anywhere

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": FIXTURE_MODEL_NAME}]})
        else:
            self._send(404, _error("not found"))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, _error("not found"))
            return
        server, config = self.server, self.server.config
        with server.lock:
            server.stats.requests += 1
            server.stats.arrivals.append(time.monotonic())
            number = server.stats.requests
            server.stats.in_flight += 1
            server.stats.max_in_flight = max(server.stats.max_in_flight, server.stats.in_flight)
        try:
            self._answer(raw, number, config)
        finally:
            with server.lock:
                server.stats.in_flight -= 1

    def _answer(self, raw: bytes, number: int, config: FixtureJudgeConfig) -> None:
        if config.latency_s:
            threading.Event().wait(config.latency_s)
        expected = f"Bearer {config.required_api_key}" if config.required_api_key else None
        if expected is not None and self.headers.get("Authorization") != expected:
            self._send(401, _error("fixture judge: missing or wrong API key"))
        elif config.fail_429_every and number % config.fail_429_every == 0:
            headers = {}
            if config.retry_after_s is not None:
                headers["Retry-After"] = f"{config.retry_after_s:g}"
            self._send(429, _error("fixture judge: injected rate limit", config.code_429), headers)
        elif config.fail_500_every and number % config.fail_500_every == 0:
            self._send(500, _error("fixture judge: injected server error"))
        else:
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, _error("fixture judge: body is not JSON"))
                return
            payload, malformed = fixture_completion(body, config, number)
            if malformed:
                with self.server.lock:
                    self.server.stats.malformed += 1
            self._send(200, payload)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None):
        data = json.dumps(payload).encode()
        with self.server.lock:
            self.server.stats.statuses[status] += 1
            if status == 200:
                self.server.stats.completions += 1
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _error(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "fixture_error", "code": code}}


@contextlib.contextmanager
def serve_fixture_judge(
    config: FixtureJudgeConfig | None = None, port: int = 0
) -> Iterator[FixtureJudgeServer]:
    """Run the fixture judge in a background thread; yields the server (`.base_url`, `.stats`)."""
    server = FixtureJudgeServer(config or FixtureJudgeConfig(), port)
    # A short poll interval keeps shutdown (once per test) fast.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--fail-429-every", type=int, default=0)
    parser.add_argument("--fail-500-every", type=int, default=0)
    parser.add_argument("--retry-after-s", type=float, default=0.0)
    parser.add_argument("--malformed-every", type=int, default=0)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument(
        "--required-api-key-env",
        default=None,
        help="name of an environment variable holding the key clients must send",
    )
    args = parser.parse_args(argv)
    config = FixtureJudgeConfig(
        fail_429_every=args.fail_429_every,
        fail_500_every=args.fail_500_every,
        retry_after_s=args.retry_after_s,
        malformed_every=args.malformed_every,
        latency_s=args.latency_s,
        required_api_key=os.environ[args.required_api_key_env]
        if args.required_api_key_env
        else None,
    )
    server = FixtureJudgeServer(config, args.port)
    print(f"FIXTURE JUDGE (not a real judge) listening on {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
