"""metrics.jsonl across crashes and resumes: each step once, no torn lines, no mixed attempts."""

import json

from orpo.metrics_log import MetricsLog, repair_jsonl


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_torn_last_metrics_line_is_repaired(tmp_path):
    """A driver killed mid-append leaves half a JSON line; the resumed run must not crash on it."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    repair_jsonl(path)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    path.write_text('{"step": 1}')
    repair_jsonl(path)
    assert path.read_text() == '{"step": 1}\n'


def test_a_resumed_attempt_replaces_the_rows_it_reports_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(0, 7):
        log.append({"step": step, "loss": 1.0})
    log.append({"step": 5, "loss": 2.0})  # restarted from the step-4 checkpoint in this process
    assert _steps(path) == [0, 1, 2, 3, 4, 5] and log.rows_dropped == 2
    path.write_text(path.read_text() + '{"step": 6, "lo')  # then the driver dies mid-append

    rerun = MetricsLog(path)  # a new driver resumes from the step-4 checkpoint again
    for step in (5, 6, 7):
        rerun.append({"step": step, "loss": 3.0})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(8))
    assert [r["loss"] for r in rows[5:]] == [3.0] * 3 and rerun.rows_dropped == 1


def test_a_rerun_from_scratch_keeps_nothing_of_the_old_attempt(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (0, 1, 2):
        log.append({"step": step})
    rerun = MetricsLog(path)
    rerun.append({"step": 0, "eval/loss": 1.0})
    assert path.read_text().splitlines() == ['{"step": 0, "eval/loss": 1.0}']
