"""The Redis store's per-process cache of stored plans (a run's plan never changes),
bounded by size: least recently used first out once the cached plans' total length
passes ``max_chars``. One 10,000-feature plan weighs as much as a thousand small ones."""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["PlanCache"]


class PlanCache:
    """Plan JSON by run id, LRU, bounded by total characters (the newest plan is always
    kept, even alone over the bound). Not thread-safe by itself: a lost update costs one
    re-read, never a wrong plan (entries are immutable)."""

    def __init__(self, max_chars: int = 8_000_000) -> None:
        self.max_chars = max_chars
        self._items: OrderedDict[str, str] = OrderedDict()
        self._chars = 0

    def get(self, run_id: str) -> str | None:
        """The cached plan of the run (now the most recently used), or None."""
        text = self._items.get(run_id)
        if text is not None:
            self._items.move_to_end(run_id)
        return text

    def put(self, run_id: str, text: str) -> None:
        """Cache the run's plan; evict the least recently used beyond the bound."""
        old = self._items.pop(run_id, None)
        if old is not None:
            self._chars -= len(old)
        self._items[run_id] = text
        self._chars += len(text)
        while self._chars > self.max_chars and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self._chars -= len(evicted)

    @property
    def chars(self) -> int:
        """Total length of the cached plans."""
        return self._chars

    def __len__(self) -> int:
        return len(self._items)
