"""One session's row quota (the max_session_rows setting): samples and recorded rows together.

Shared by the session actor (samples) and its recorder (SUMO's outputs), both on the event
loop. Rows are counted as they are handed to the writer, so what was handed before the quota
ran out is stored, and nothing after it."""

from __future__ import annotations

from collections.abc import Callable


class RowQuota:
    def __init__(self, limit: int, on_exceeded: Callable[[], None] = lambda: None) -> None:
        self.limit = limit  # 0: no quota
        self.used = 0
        self.exceeded = False
        self._on_exceeded = on_exceeded

    def take(self, n: int) -> int:
        """How many of `n` new rows may still be stored; the first refusal calls on_exceeded."""
        if not self.limit:
            self.used += n
            return n
        allowed = max(0, min(n, self.limit - self.used))
        self.used += allowed
        if allowed < n and not self.exceeded:
            self.exceeded = True
            self._on_exceeded()
        return allowed
