"""The live response-latency observer and its Prometheus histogram, on a timeline with a virtual clock."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kame.events import AssistantWord, Final
from kame.server.metrics import ResponseLatency, ServerMetrics
from kame.timeline import Timeline, VirtualClock


def final(text: str, start: float, end: float) -> Final:
    words = text.split()
    step = (end - start) / len(words)
    times = [[w, round(start + i * step, 3), round(start + (i + 1) * step, 3)] for i, w in enumerate(words)]
    return Final(text=text, utterance=0, words=times, covered=end, stable=len(words), compute_s=0.0)


def test_latency_is_the_first_word_after_the_turn_minus_its_end_and_negative_when_the_assistant_led():
    clock = VirtualClock()
    timeline = Timeline("s", clock=clock)
    seen: list[float] = []
    timeline.subscribe(ResponseLatency(seen.append), *ResponseLatency.TYPES)
    clock.set(2.4)
    timeline.emit(final("what is the capital", 1.0, 2.0))  # the user's last word ends at 2.0 s
    clock.set(2.7)
    timeline.emit(AssistantWord(text="Paris"))  # 0.7 s later
    timeline.emit(AssistantWord(text="is"))  # the same answer: no second figure
    clock.set(5.0)
    timeline.emit(AssistantWord(text="It"))  # the assistant starts while the user asks again...
    clock.set(6.5)
    timeline.emit(final("and of spain", 4.6, 5.6))  # ...a question that ends at 5.6 s
    clock.set(7.0)
    timeline.emit(AssistantWord(text="Madrid"))
    assert seen == [pytest.approx(0.7), pytest.approx(5.0 - 5.6)]


def test_the_server_registry_exports_the_histogram():
    metrics = ServerMetrics()
    clock = VirtualClock()
    timeline = Timeline("s", clock=clock)
    metrics.observe(timeline)
    clock.set(3.0)
    timeline.emit(final("hello there", 1.0, 2.0))
    timeline.emit(AssistantWord(text="Hi"))
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    samples = families["kame_response_latency_seconds"].samples
    count = next(s.value for s in samples if s.name.endswith("_count"))
    buckets = {s.labels["le"]: s.value for s in samples if "le" in s.labels}
    assert count == 1
    assert list(buckets)[0] == "-2.0" and "5.0" in buckets  # negative buckets: the assistant may lead
    assert buckets["0.75"] == 0 and buckets["1.0"] == 1  # the one figure: 3.0 s - 2.0 s
