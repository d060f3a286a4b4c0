"""A process that appends to a judgment cache (for the shared-cache test; kept out of the test
module so a spawned child imports only the cache)."""

from __future__ import annotations

from evaluation.judges import JudgmentCache


def append_records(path: str, writer: int, n: int, size: int) -> None:
    """`n` records keyed `<writer>-<i>`, each `size` copies of the digit `writer`."""
    cache = JudgmentCache(path)
    for i in range(n):
        cache.put({"key": f"{writer}-{i}", "content": f"{writer}" * size})
