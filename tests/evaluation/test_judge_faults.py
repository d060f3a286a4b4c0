"""The judging driver SIGKILLed mid-run, then rerun: every judgment present, none requested twice.

The judge counts, on its side, how often each item's prompt arrived. The kill is deterministic: a
wrapper around the cache's own ``put`` SIGKILLs the driver right after the third judgment is
stored. Each answer is cached by the thread that received it, the moment it arrives, so what a kill
loses is only what was in the air: requests sent but not yet answered, at most ``concurrency`` of
them, are sent again once; a judgment that reached the cache never is.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from evaluation.fixture_judge import _Handler

TAG = re.compile(rb"ITEM-(\d\d)")


class _CountingHandler(_Handler):
    """Counts the requests per item tag (``ITEM-NN`` in the judged output)."""

    def _answer(self, raw, number, config):
        for tag in set(TAG.findall(raw)):
            with self.server.lock:
                self.server.per_item[int(tag)] += 1
        super()._answer(raw, number, config)


def _judge(tmp_path, alpaca_reference_path, judge, n_items, kill_after: int | None):
    references = json.loads(alpaca_reference_path.read_text())[:n_items]
    outputs = [{"instruction": r["instruction"], "output": f"{r['output']} ITEM-{i:02d}"}
               for i, r in enumerate(references)]
    settings = {k: v for k, v in dataclasses.asdict(judge).items()}
    kill = "" if kill_after is None else f"""
    stored = []
    original = judges.JudgmentCache.put
    def put_then_kill(self, record):
        original(self, record)
        stored.append(1)
        if len(stored) == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)  # the driver dies with {kill_after} judgments stored
    judges.JudgmentCache.put = put_then_kill
    """
    script = f"""
    import json, os, signal
    from evaluation import judges
    from evaluation.alpaca_eval import AlpacaEvalConfig, evaluate
    {kill.strip()}
    config = AlpacaEvalConfig(reference_outputs={str(alpaca_reference_path)!r},
                              judge=judges.JudgeConfig(**json.loads({json.dumps(settings)!r})), allow_subset=True)
    result = evaluate(json.loads({json.dumps(outputs)!r}), "toy-model", config, output_dir={str(tmp_path / 'ae')!r})
    print(json.dumps(result.summary))
    """
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_judging_killed_mid_run_then_rerun_requests_no_stored_judgment_again(
        start_judge, judge_config, tmp_path, alpaca_reference_path, concurrency):
    n_items = 10
    server = start_judge(latency_s=0.05)  # answers take a moment, so several are in flight at once
    server.RequestHandlerClass, server.per_item = _CountingHandler, Counter()
    judge = judge_config(server, concurrency=concurrency, cache_path=None)

    killed = _judge(tmp_path, alpaca_reference_path, judge, n_items, kill_after=3)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    cache = tmp_path / "ae" / "judge_cache.jsonl"
    stored = {int(m) for line in cache.read_text().splitlines()
              for m in TAG.findall(json.dumps(json.loads(line)["messages"]).encode())}
    assert len(stored) >= 3 and not (tmp_path / "ae" / "summary.json").exists()
    sent_before_kill = Counter(server.per_item)

    rerun = _judge(tmp_path, alpaca_reference_path, judge, n_items, kill_after=None)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["n_total"] == n_items and summary["usage"]["cache_hits"] == len(stored)
    assert sorted(server.per_item) == list(range(n_items))  # every judgment present
    for item in stored:  # a judgment that reached the cache is never requested again
        assert server.per_item[item] == 1, (item, server.per_item)
    resent = [item for item, count in server.per_item.items() if count > 1]
    # Only requests in flight at the kill, each once more, never more than the concurrency allows.
    assert all(sent_before_kill[item] == 1 and server.per_item[item] == 2 for item in resent)
    assert len(resent) <= concurrency
    assert sum(server.per_item.values()) == n_items + len(resent)
