"""Retry policy shared by every thread of a `JudgeClient`: one pause, one budget, one breaker.

A 429 is about the account, not the request, so it pauses *all* threads until the server's
Retry-After (capped by `backoff_max_s`) has passed, and each resumes with a little jitter so they
do not all hit the endpoint in the same millisecond. Other transient errors back off per request
with full jitter. The run stops, raising `JudgeCircuitOpen`, when the retries of the whole run
exceed `max_total_retries`, after `breaker_consecutive_429` 429s in a row (no success between
them), or at once on OpenAI's `insufficient_quota` (a 429 that no wait can fix).

Every wait is `stop.wait(timeout)`, so setting the stop event (Ctrl-C, a fatal error, the
breaker) ends all retry loops at once instead of after their sleeps.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from typing import TYPE_CHECKING, Sequence

import openai

from evaluation.settings import JudgeConfig

if TYPE_CHECKING:
    from evaluation.judges import Judgment

# Statuses worth retrying: timeouts, lock conflicts, rate limits and server errors.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
QUOTA_CODES = frozenset({"insufficient_quota"})
"""429 error codes that mean "no money left": retrying cannot help."""


class JudgeRequestsFailed(RuntimeError):
    """Some judgments could not be obtained. Every success is already in the cache, failures are
    not, so a rerun requests exactly the failed ones."""

    def __init__(self, failed: Sequence[Judgment], total: int, cache_path: str | None, reason: str = ""):
        self.failed = list(failed)
        self.total, self.cache_path = total, cache_path
        errors = "; ".join(sorted({j.error or "" for j in self.failed})[:3])
        where = f"successes are cached in {cache_path}" if cache_path else "no cache configured"
        super().__init__(
            f"{len(self.failed)} of {total} judge request(s) failed{reason}: {errors} ({where}; "
            "rerun to retry only the failed ones)"
        )


class JudgeCircuitOpen(JudgeRequestsFailed):
    """The breaker stopped the run (retry budget, consecutive 429s, or no quota)."""


class JudgeInterrupted(JudgeRequestsFailed):
    """`JudgeClient.interrupt()` stopped the run before every request was answered."""


class JudgeStopped(Exception):
    """Raised inside a worker when the run's stop event is set; never escapes `complete_many`."""


def is_retryable(error: BaseException) -> bool:
    """Transient failures: timeouts, dropped connections, 408/409/429 and 5xx."""
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUSES or error.status_code >= 500
    return False


def error_code(error: BaseException) -> str | None:
    """The `error.code` of an OpenAI-style error body (e.g. `insufficient_quota`)."""
    code = getattr(error, "code", None)  # openai sets it from the body's `error.code`
    if code is None and isinstance(body := getattr(error, "body", None), dict):
        inner = body.get("error", body)
        code = inner.get("code") if isinstance(inner, dict) else None
    return code if isinstance(code, str) else None


def retry_after_seconds(error: BaseException) -> float | None:
    """The server's requested wait (`retry-after-ms`, or `Retry-After` in seconds or as a date)."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    headers = response.headers
    if (value := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    if (value := headers.get("retry-after")) is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(
    attempt: int, retry_after: float | None, config: JudgeConfig, rng: random.Random
) -> float:
    """Seconds to wait before retry number `attempt` (0-based).

    A server's Retry-After wins (capped at `backoff_max_s`); otherwise exponential backoff with
    full jitter, uniform in [0, min(backoff_max_s, backoff_initial_s * 2**attempt)], so workers
    that failed together spread out.
    """
    if retry_after is not None:
        return min(retry_after, config.backoff_max_s)
    return rng.uniform(0, min(config.backoff_max_s, config.backoff_initial_s * 2**attempt))


class RateLimits:
    """The run-wide state behind the retry loops: stop event, shared pause, budget, breaker."""

    def __init__(self, config: JudgeConfig, rng: random.Random):
        self.config = config
        self.stop = threading.Event()
        """Set on Ctrl-C, a fatal error or an open breaker: every wait returns at once."""
        self.tripped: str | None = None
        """Why the breaker opened; None while closed."""
        self.resume_at = 0.0
        """`time.monotonic()` before which no thread sends (the shared 429 pause)."""
        self.total_retries = 0
        self._paused_by: int | None = None
        self._consecutive_429 = 0
        self._rng = rng
        self._lock = threading.Lock()

    def wait_turn(self) -> None:
        """Before each attempt: wait out a shared pause another thread started; raise if stopped."""
        while True:
            if self.stop.is_set():
                raise JudgeStopped
            with self._lock:
                remaining = self.resume_at - time.monotonic()
                mine = self._paused_by == threading.get_ident()
                jitter = self._rng.uniform(0, min(self.config.backoff_initial_s, 1.0))
            if remaining <= 0 or mine:
                return
            self.stop.wait(remaining + jitter)

    def sleep(self, seconds: float) -> None:
        """A stop-aware sleep: the default for the client's own backoff."""
        if self.stop.wait(seconds):
            raise JudgeStopped

    def succeeded(self) -> None:
        with self._lock:
            self._consecutive_429 = 0
            if self._paused_by == threading.get_ident():
                self._paused_by = None

    def before_retry(self, error: BaseException, attempt: int) -> float:
        """Account one retry of `error`; the delay this thread waits. Trips the breaker if due."""
        status = getattr(error, "status_code", None)
        with self._lock:
            self.total_retries += 1
            config = self.config
            if status == 429 and error_code(error) in QUOTA_CODES:
                self._trip(f"quota exhausted ({error_code(error)}): retrying cannot help")
            if status == 429:
                self._consecutive_429 += 1
                if config.breaker_consecutive_429 and self._consecutive_429 >= config.breaker_consecutive_429:
                    self._trip(f"{self._consecutive_429} consecutive 429s (breaker_consecutive_429)")
            if config.max_total_retries is not None and self.total_retries > config.max_total_retries:
                self._trip(f"retry budget spent: {config.max_total_retries} retries (max_total_retries)")
            delay = backoff_delay(attempt, retry_after_seconds(error), config, self._rng)
            if status == 429:  # the account is limited: everyone waits
                until = time.monotonic() + delay
                if until > self.resume_at:
                    self.resume_at, self._paused_by = until, threading.get_ident()
        return delay

    def _trip(self, reason: str) -> None:
        if self.tripped is None:
            self.tripped = reason
        self.stop.set()
        raise JudgeStopped

