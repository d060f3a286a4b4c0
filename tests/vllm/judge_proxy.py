"""Test-only HTTP proxy in front of a real judge server: counts what reaches the server (per
prompt) and injects faults (429, 500, a stall past the client's timeout) on chosen requests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


def prompt_key(body: bytes) -> str:
    """What identifies one judgment on the wire: the model and the messages."""
    request = json.loads(body)
    return hashlib.sha256(json.dumps([request.get("model"), request.get("messages")]).encode()).hexdigest()


class JudgeProxy:
    """``faults``: request number (1-based, over all chat requests) -> "429", "500" or "stall"."""

    def __init__(self, upstream: str, faults: dict[int, str] | None = None, stall_s: float = 0.0):
        self.upstream = upstream.rstrip("/").removesuffix("/v1")  # paths arrive as /v1/...
        self.faults = dict(faults or {})
        self.stall_s = stall_s
        self.requests = 0
        self.answered: Counter[str] = Counter()
        """Per prompt: answers the server gave (HTTP 200) and the proxy passed on."""
        self.injected: Counter[str] = Counter()
        self.upstream_errors = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.requests += 1
                    fault = proxy.faults.get(proxy.requests)
                    if fault:
                        proxy.injected[fault] += 1
                if fault == "429":
                    return self._reply(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0"})
                if fault == "500":
                    return self._reply(500, b'{"error": {"message": "injected"}}')
                if fault == "stall":  # never answer within the client's timeout
                    time.sleep(proxy.stall_s)
                    return self._reply(504, b'{"error": {"message": "stalled"}}')
                forward = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(forward, timeout=600) as response:
                        status, answer = response.status, response.read()
                except urllib.error.HTTPError as error:
                    status, answer = error.code, error.read()
                except OSError:  # the server is down
                    with proxy.lock:
                        proxy.upstream_errors += 1
                    return self._reply(502, b'{"error": {"message": "upstream unreachable"}}')
                if status == 200:
                    with proxy.lock:
                        proxy.answered[prompt_key(body)] += 1
                self._reply(status, answer)

            def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                with contextlib.suppress(OSError):  # the client may have given up (timeout)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)

        return Handler


@contextlib.contextmanager
def judge_proxy(upstream: str, **kwargs) -> Iterator[JudgeProxy]:
    proxy = JudgeProxy(upstream, **kwargs)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
