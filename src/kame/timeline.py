"""A session's timeline: every event with when it happened and how much user audio had arrived by then.

All latency analysis (word-to-oracle lag, time to first token, partial cadence, front-end reaction) is
computed afterwards from this one record. The system's events are the typed classes of ``kame.events``
(``emit(event)``); underneath, ``record(type, text=None, **fields)`` appends
``{"t", "audio_t", "session", "type", "text"?, **fields}`` for any type. ``t`` is seconds since the session
started on an injectable clock (a ``VirtualClock`` drives offline simulation), ``audio_t`` is seconds of
user audio received so far (advanced with ``add_audio``). Events can be streamed to a JSON Lines file
as they happen and observers (metrics exporters, the CLI's printer) subscribe by event class, as
Pipecat's observers do. Thread-safe: the STT worker, the event loop and the frame thread may all record.

It sits below every layer (the back-end records on it, the runtime owns one per session).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from kame.events import AudioReceived, TimelineEvent
from kame.jsonl import json_objects

logger = logging.getLogger(__name__)

Event = dict[str, Any]
Observer = Callable[[Event], None]
Clock = Callable[[], float]

# Field names every event carries; ``record`` refuses them as extra fields.
RESERVED = ("t", "audio_t", "session", "type", "text")


class VirtualClock:
    """A clock that moves only when told to: offline simulation and deterministic tests."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        self._now += seconds
        return self._now

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError(f"a clock cannot go back (from {self._now} to {now})")
        self._now = float(now)


class Timeline:
    """The ordered events of one session.

    ``keep`` bounds how many events stay in memory (``None``: all); a JSON Lines ``path`` receives
    every event regardless, flushed line by line so that a crash leaves a readable file.
    """

    def __init__(
        self,
        session: str = "session",
        *,
        clock: Clock = time.monotonic,
        path: str | Path | None = None,
        keep: int | None = 200_000,
    ) -> None:
        if keep is not None and keep < 0:
            raise ValueError(f"keep must be >= 0 or None, got {keep}")
        self.session = session
        self._clock = clock
        self._t0 = clock()
        self._audio_t = 0.0
        self._lock = threading.Lock()
        self._events: deque[Event] = deque(maxlen=keep)
        self._observers: list[Observer] = []
        self._file: IO[str] | None = None
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
        self.count = 0  # events recorded, including those no longer kept in memory
        self.observer_errors = 0

    # -- time ---------------------------------------------------------------------------------------
    def now(self) -> float:
        """Seconds since the session started, on this timeline's clock."""
        return self._clock() - self._t0

    @property
    def audio_t(self) -> float:
        """Seconds of user audio received so far."""
        return self._audio_t

    def add_audio(self, seconds: float, *, record: bool = True) -> float:
        """Count ``seconds`` more user audio as received (and record an ``audio`` event)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"audio duration must be a finite number >= 0, got {seconds}")
        with self._lock:
            self._audio_t += seconds
            audio_t = self._audio_t
        if record:
            self.emit(AudioReceived(duration=round(seconds, 6)))
        return audio_t

    # -- events -------------------------------------------------------------------------------------
    def emit(self, event: TimelineEvent) -> Event:
        """Record one of the system's declared events (``kame.events``); returns the record."""
        return self.record(event.TYPE, event.text, **event.fields())

    def record(self, type: str, text: str | None = None, **fields: Any) -> Event:
        """Append an event; returns it. ``fields`` must be JSON-serialisable."""
        clash = [name for name in fields if name in RESERVED]
        if clash:
            raise ValueError(f"{', '.join(clash)} are set by the timeline itself; rename the field")
        with self._lock:
            event: Event = {
                "t": round(self.now(), 6),
                "audio_t": round(self._audio_t, 6),
                "session": self.session,
                "type": type,
            }
            if text is not None:
                event["text"] = text
            event.update(fields)
            self._events.append(event)
            self.count += 1
            if self._file is not None:
                self._file.write(json.dumps(event, ensure_ascii=False, default=_jsonable) + "\n")
                self._file.flush()
            observers = list(self._observers)
        for observer in observers:
            try:
                observer(event)
            except Exception:  # noqa: BLE001 - an observer must never break the session it watches
                self.observer_errors += 1
                logger.exception("timeline observer %r failed on %s", observer, type)
        return event

    def subscribe(self, observer: Observer, *types: type[TimelineEvent]) -> Callable[[], None]:
        """Call ``observer(event)`` after every future event of ``types`` (all events if none given);
        returns a function that unsubscribes.

        Observers run on the recording thread and must be quick; exceptions are logged and counted.
        """
        if types:
            names = frozenset(cls.TYPE for cls in types)
            inner = observer

            def observer(event: Event) -> None:
                if event["type"] in names:
                    inner(event)

        with self._lock:
            self._observers.append(observer)

        def unsubscribe() -> None:
            with self._lock:
                if observer in self._observers:
                    self._observers.remove(observer)

        return unsubscribe

    @property
    def events(self) -> list[Event]:
        """A snapshot of the events kept in memory."""
        with self._lock:
            return list(self._events)

    def of_type(self, *types: str) -> list[Event]:
        return [event for event in self.events if event["type"] in types]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __bool__(self) -> bool:  # a timeline with no events yet is still a timeline
        return True

    # -- files --------------------------------------------------------------------------------------
    def write_jsonl(self, path: str | Path) -> Path:
        """Write the events kept in memory to ``path`` (one JSON object per line)."""
        return write_jsonl(self.events, path)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Timeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(events: Iterable[Event], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for event in events:
            file.write(json.dumps(event, ensure_ascii=False, default=_jsonable) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Event]:
    """Read a timeline file back; a malformed line raises ValueError naming it."""
    path = Path(path)
    events: list[Event] = []
    with path.open(encoding="utf-8") as file:
        for where, event in json_objects(file, str(path)):
            if "type" not in event or "t" not in event:
                raise ValueError(f"{where}: a timeline event needs at least 't' and 'type'")
            events.append(event)
    return events


def _jsonable(value: Any) -> Any:
    """numpy scalars and other number-likes become plain numbers; anything else its string."""
    if hasattr(value, "__index__"):
        return int(value.__index__())
    if hasattr(value, "__float__"):
        return float(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)
