"""LLM-judge client for any OpenAI-compatible chat endpoint: retries, concurrency, cache, cost.

Used by AlpacaEval (pairwise, logprobs) and MT-Bench (single-answer grading).

Flow: benchmark modules build `ChatRequest`s, `JudgeClient.complete_many` answers them (cache
first, then the endpoint), and the benchmark parses each `Judgment` itself: this module never
interprets verdicts.

HTTP: the official `openai` client with `max_retries=0` and our own retry loop. The client gives
typed errors (`RateLimitError`, `APITimeoutError`, ...), the response headers for `Retry-After`
and the usage / logprobs schema, while the loop keeps the policy (which errors, how long to wait)
explicit and testable with an injected `sleep`. Concurrency is a thread pool, not asyncio:
callers are synchronous stages (CLI, Ray tasks, pytest, notebooks) where `asyncio.run` would clash
with a running loop, and the work is I/O-bound so the GIL does not matter at judge concurrency.

Failures: a request that still fails after its retries comes back as a `Judgment` with `error`
set and is never cached; the benchmarks then raise `JudgeRequestsFailed` (after every success is
cached), so the stage fails and a rerun sends only the failed requests. Rate limits, the run-wide
retry budget, the breaker and the stop event are in `evaluation.judge_limits`.

Secrets: the config names the *environment variable* holding the key; the key is read from the
environment only, lives inside the `openai` client, and never reaches the cache, logs or repr.
It is sent only where `JudgeConfig.key_env` allows: OpenAI's key to OpenAI, others named
explicitly, never over plain http except to loopback.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import openai
from tqdm.auto import tqdm

from evaluation.judge_limits import (  # noqa: F401  (re-exported: the retry policy, errors)
    JudgeCircuitOpen,
    JudgeInterrupted,
    JudgeRequestsFailed,
    JudgeStopped,
    RateLimits,
    backoff_delay,
    is_retryable,
    retry_after_seconds,
)
from evaluation.settings import JudgeConfig  # noqa: F401  (the client's config)

logger = logging.getLogger(__name__)

# Placeholder for keyless servers (vLLM without --api-key); the openai client refuses None.
NO_KEY_PLACEHOLDER = "EMPTY"


def raise_for_failures(judgments: Sequence[Judgment], client: JudgeClient) -> None:
    """Raise `JudgeRequestsFailed` when any judgment is a request error (benchmarks call this
    after `complete_many`, so a stage with failed requests fails instead of being marked done)."""
    failed = [j for j in judgments if j.error is not None]
    if failed:
        raise JudgeRequestsFailed(failed, len(judgments), client.config.cache_path)


@dataclass(frozen=True)
class ChatRequest:
    """One judge call: rendered messages plus decoding parameters."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs, already rendered from the template."""
    template_id: str
    """Template name and hash of its text, e.g. `single-v1@3f2a...`; part of the cache key."""
    temperature: float = 0.0
    max_tokens: int = 2048
    top_logprobs: int | None = None
    """When set, request `logprobs=True, top_logprobs=k` (judges that offer it)."""

    def decoding(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_logprobs": self.top_logprobs,
        }


@dataclass(frozen=True)
class Judgment:
    """The judge's answer to one request (or the reason there is none)."""

    key: str
    content: str | None
    """Generated text; None when the request failed."""
    top_logprobs: tuple[dict[str, float], ...] | None = None
    """For each generated token position, {token: logprob} of the top-k alternatives."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    response_model: str | None = None
    """Model name the server reported (the fixture judge says `fixture-judge`)."""
    from_cache: bool = False
    error: str | None = None
    """Set when all retries failed or the error was not retryable; such judgments are not
    cached, so a rerun tries again."""


def template_id(name: str, template_text: str) -> str:
    """Stable id for a prompt template: its name plus a short hash of its text."""
    return f"{name}@{hashlib.sha256(template_text.encode()).hexdigest()[:12]}"


def cache_key(judge_model: str, request: ChatRequest, endpoint: str) -> str:
    """Key of a judgment: endpoint, judge model, template, rendered inputs and decoding parameters.

    The endpoint is part of it: "gpt-4" on a proxy or a local server is not OpenAI's gpt-4.
    """
    payload = {
        "endpoint": endpoint.rstrip("/"),
        "judge_model": judge_model,
        "template_id": request.template_id,
        "messages": [list(m) for m in request.messages],
        "decoding": request.decoding(),
    }
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def mask_secret(secret: str | None) -> str:
    """What may be shown of a secret: nothing but whether it is set."""
    return "<unset>" if not secret else "****"


# --------------------------------------------------------------------------- cache


class JudgmentCache:
    """Append-only JSONL store of successful judgments, one self-contained record per line.

    Each record is written with a single `write` of a full line, flushed and fsynced, so a
    kill mid-run leaves at worst one truncated last line; `load` skips lines that do not parse,
    and the next append starts on a fresh line. Appends and loads hold an `flock` on the sidecar
    `<name>.lock`, so processes sharing one cache never interleave or read half-written lines.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._records: dict[str, dict[str, Any]] = {}
        self.n_corrupt_lines = 0
        self._load()

    @contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, mode)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self._locked(fcntl.LOCK_SH), self.path.open("rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    self._records[record["key"]] = record
                except (ValueError, KeyError, TypeError):
                    self.n_corrupt_lines += 1
        if self.n_corrupt_lines:
            logger.warning(
                "%s: skipped %d unreadable line(s) (likely a run killed mid-write); "
                "those judgments will be requested again",
                self.path,
                self.n_corrupt_lines,
            )

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def put(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._locked(fcntl.LOCK_EX), self.path.open("ab") as f:
            # A killed writer (this process or another) may have left a line without its
            # newline: never glue onto it.
            if f.tell() > 0 and not _ends_with_newline(self.path):
                f.write(b"\n")
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        self._records[record["key"]] = record


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _record_from(judgment: Judgment, request: ChatRequest, config: JudgeConfig) -> dict[str, Any]:
    # Inputs are stored alongside the verdict so the cache doubles as an audit log.
    return {
        "key": judgment.key,
        "endpoint": config.base_url,
        "judge_model": config.model,
        "template_id": request.template_id,
        "messages": [list(m) for m in request.messages],
        "decoding": request.decoding(),
        "content": judgment.content,
        "top_logprobs": None if judgment.top_logprobs is None else list(judgment.top_logprobs),
        "prompt_tokens": judgment.prompt_tokens,
        "completion_tokens": judgment.completion_tokens,
        "response_model": judgment.response_model,
        "created": time.time(),
    }


def _judgment_from(record: dict[str, Any]) -> Judgment:
    top = record.get("top_logprobs")
    return Judgment(
        key=record["key"],
        content=record["content"],
        top_logprobs=None if top is None else tuple(dict(position) for position in top),
        prompt_tokens=int(record.get("prompt_tokens", 0)),
        completion_tokens=int(record.get("completion_tokens", 0)),
        response_model=record.get("response_model"),
        from_cache=True,
    )


# --------------------------------------------------------------------------- accounting


@dataclass
class Usage:
    """Requests, tokens and cost; cache hits are counted apart from billed calls."""

    http_attempts: int = 0
    """Every HTTP attempt, retries included."""
    completions: int = 0
    """Successful, billed completions."""
    retries: int = 0
    failures: int = 0
    """Requests given up on (not retryable, or retries exhausted)."""
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    """Tokens of cache hits: what a rerun did not pay for."""
    cached_completion_tokens: int = 0

    def summary(self, config: JudgeConfig) -> dict[str, Any]:
        def cost(prompt: int, completion: int) -> float:
            return (
                prompt * config.usd_per_million_prompt_tokens
                + completion * config.usd_per_million_completion_tokens
            ) / 1e6

        return {
            **dataclasses.asdict(self),
            "cost_usd": cost(self.prompt_tokens, self.completion_tokens),
            "cost_saved_by_cache_usd": cost(
                self.cached_prompt_tokens, self.cached_completion_tokens
            ),
        }


# --------------------------------------------------------------------------- client


class JudgeClient:
    """Calls the judge with retries and a concurrency limit; caches and accounts every call."""

    def __init__(
        self,
        config: JudgeConfig,
        *,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ):
        """`sleep`: the per-request backoff wait (tests inject one); by default a wait on the
        stop event, so interruption cuts it short."""
        self.config = config
        self.usage = Usage()
        self.cache = JudgmentCache(config.cache_path) if config.cache_path else None
        self._rng = rng or random.Random(0)
        self.limits = RateLimits(config, self._rng)
        self._sleep = sleep or self.limits.sleep
        self._lock = threading.Lock()
        self._openai = openai.OpenAI(
            base_url=config.base_url,
            api_key=_api_key_from_env(config.key_env()),
            max_retries=0,  # retries are ours: see the module docstring
            timeout=config.timeout_s,
        )

    def __repr__(self) -> str:
        return (
            f"JudgeClient(model={self.config.model!r}, base_url={self.config.base_url!r}, "
            f"api_key={mask_secret(self._openai.api_key)}, cache={self.config.cache_path!r})"
        )

    __str__ = __repr__

    def close(self) -> None:
        self._openai.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def interrupt(self) -> None:
        """Stop a `complete_many` running in another thread: retry loops end at once, the call
        raises `JudgeInterrupted` with what it received cached."""
        self.limits.stop.set()

    def usage_summary(self) -> dict[str, Any]:
        return self.usage.summary(self.config)

    def complete(self, request: ChatRequest) -> Judgment:
        return self.complete_many([request])[0]

    def complete_many(self, requests: Sequence[ChatRequest], desc: str = "judge") -> list[Judgment]:
        """Answer every request, in order. Cached ones cost nothing; identical ones are sent once.

        Each judgment is cached as soon as it arrives, so if this raises (or the process dies)
        a rerun requests only what is missing. Failed requests come back with `error` set and
        are never cached (see `raise_for_failures`). Raises `JudgeCircuitOpen` when the breaker
        stops the run; on Ctrl-C every retry loop stops and this returns within about a second.
        """
        keys = [cache_key(self.config.model, request, self.config.base_url) for request in requests]
        results: list[Judgment | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            record = self.cache.get(key) if self.cache is not None else None
            if record is None:
                pending.setdefault(key, []).append(index)
                continue
            judgment = _judgment_from(record)
            self.usage.cache_hits += 1
            self.usage.cached_prompt_tokens += judgment.prompt_tokens
            self.usage.cached_completion_tokens += judgment.completion_tokens
            results[index] = judgment

        if pending:
            self._request_all(requests, pending, results, desc)
        assert all(judgment is not None for judgment in results)
        return results  # type: ignore[return-value]

    def _request_all(
        self,
        requests: Sequence[ChatRequest],
        pending: dict[str, list[int]],
        results: list[Judgment | None],
        desc: str,
    ) -> None:
        if self.limits.tripped is not None:  # an open breaker stays open for this client
            raise JudgeCircuitOpen([], len(requests), self.config.cache_path,
                                   reason=f" (breaker: {self.limits.tripped})")
        self.limits.stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency)
        futures: dict[Future[Judgment], str] = {}
        first_error: BaseException | None = None
        bar = tqdm(total=len(pending), desc=desc, disable=not self.config.progress)

        def fetch(key: str) -> Judgment:
            request = requests[pending[key][0]]
            judgment = self._request_with_retries(request, key)
            if judgment.error is None and self.cache is not None:
                # Cached here, the moment it arrives: a killed driver loses only what was in the air.
                self.cache.put(_record_from(judgment, request, self.config))
            return judgment

        def store(judgment: Judgment, key: str) -> None:
            bar.update()
            for index in pending[key]:
                results[index] = judgment

        try:  # submitting inside: a Ctrl-C that lands while submitting still stops every thread
            for key in pending:
                futures[pool.submit(fetch, key)] = key
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    judgment = future.result()
                except JudgeStopped:
                    continue  # the breaker or a fatal error set the stop event
                except BaseException as error:  # noqa: BLE001 - re-raised after saving the rest
                    first_error = error
                    break
                store(judgment, futures[future])
                if self.limits.stop.is_set():
                    break
        finally:
            # On an error, the breaker or Ctrl-C, stop every retry loop and do not wait for
            # in-flight requests: their answers are lost, everything received is in the cache.
            self.limits.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            for future, key in futures.items():  # answers that arrived meanwhile count too
                done = future.done() and not future.cancelled() and future.exception() is None
                if done and results[pending[key][0]] is None:
                    store(future.result(), key)
            bar.close()
        if first_error is not None:
            raise first_error
        why = self.limits.tripped or "interrupted"
        unanswered = [Judgment(key=key, content=None, error=f"not requested: {why}")
                      for key, indices in pending.items() if results[indices[0]] is None]
        if self.limits.tripped is not None:
            raise JudgeCircuitOpen(unanswered, len(requests), self.config.cache_path,
                                   reason=f" (breaker: {why})")
        if unanswered:  # `interrupt()` from another thread
            raise JudgeInterrupted(unanswered, len(requests), self.config.cache_path, reason=" (interrupted)")

    def _request_with_retries(self, request: ChatRequest, key: str) -> Judgment:
        for attempt in range(self.config.max_retries + 1):
            self.limits.wait_turn()  # the shared 429 pause; raises JudgeStopped once stopped
            with self._lock:
                self.usage.http_attempts += 1
            try:
                judgment = self._send_once(request, key)
            except openai.APIError as error:
                description = _describe(error, self._openai.api_key)
                retryable = is_retryable(error)
                if not retryable or attempt == self.config.max_retries:
                    with self._lock:
                        self.usage.failures += 1
                    reason = "retries exhausted" if retryable else "not retryable"
                    logger.warning("judge request failed (%s): %s", reason, description)
                    return Judgment(key=key, content=None, error=f"{reason}: {description}")
                delay = self.limits.before_retry(error, attempt)  # raises if the breaker opens
                logger.info(
                    "judge request: %s; retry %d/%d in %.2fs",
                    description,
                    attempt + 1,
                    self.config.max_retries,
                    delay,
                )
                with self._lock:
                    self.usage.retries += 1
                self._sleep(delay)
                continue
            self.limits.succeeded()
            with self._lock:
                self.usage.completions += 1
                self.usage.prompt_tokens += judgment.prompt_tokens
                self.usage.completion_tokens += judgment.completion_tokens
            return judgment
        raise AssertionError("unreachable: the loop returns on its last attempt")

    def _send_once(self, request: ChatRequest, key: str) -> Judgment:
        kwargs: dict[str, Any] = {}
        if request.top_logprobs:
            kwargs = {"logprobs": True, "top_logprobs": request.top_logprobs}
        response = self._openai.chat.completions.create(
            model=self.config.model,
            messages=[{"role": role, "content": content} for role, content in request.messages],
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            n=1,
            **kwargs,
        )
        choice = response.choices[0]
        top_logprobs = None
        if choice.logprobs is not None and choice.logprobs.content:
            top_logprobs = tuple(
                {alt.token: float(alt.logprob) for alt in position.top_logprobs}
                for position in choice.logprobs.content
            )
        usage = response.usage
        return Judgment(
            key=key,
            content=choice.message.content or "",
            top_logprobs=top_logprobs,
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
            response_model=response.model,
        )


def _api_key_from_env(variable: str | None) -> str:
    if variable is None:
        return NO_KEY_PLACEHOLDER
    key = os.environ.get(variable)
    if not key:
        raise RuntimeError(
            f"judge API key: environment variable {variable!r} (judge.api_key_env) is not set "
            "(set it, or use api_key_env: null for a keyless server)"
        )
    return key


def _describe(error: BaseException, secret: str) -> str:
    """Error class, status and message, with the key scrubbed (some servers echo it in 401s)."""
    status = getattr(error, "status_code", None)
    head = type(error).__name__ + (f" (HTTP {status})" if status is not None else "")
    message = str(error)[:300]
    if secret and secret != NO_KEY_PLACEHOLDER:
        message = message.replace(secret, mask_secret(secret))
    return f"{head}: {message}"

