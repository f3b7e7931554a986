"""The one bounded queue that drops rather than blocks: a producer that must never wait (an STT worker,
the event loop feeding the oracle engine) keeps going, and the consumer sees the newest items."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldest(Generic[T]):
    """A FIFO of at most ``limit`` items. Past the limit the oldest item for which ``expendable`` is
    true goes first (the oldest item of all when none is), and ``push`` returns it."""

    def __init__(self, limit: int, expendable: Callable[[T], bool] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"a queue holds at least one item, got a limit of {limit}")
        self.limit = limit
        self._expendable = expendable
        self._items: deque[T] = deque()

    def push(self, item: T) -> T | None:
        """Append ``item``; returns the item dropped to make room, if one was."""
        self._items.append(item)
        if len(self._items) <= self.limit:
            return None
        victim = self._items[0]
        if self._expendable is not None:
            victim = next((queued for queued in self._items if self._expendable(queued)), victim)
        self._items.remove(victim)
        return victim

    def popleft(self) -> T:
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)
