"""The memory of served transcripts: counted once per request, for its own user, while fresh."""

from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from app.services.served_transcripts import ServedTranscripts


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counted(metrics: Metrics, method: str) -> tuple[float, float]:
    registry: CollectorRegistry = metrics.registry
    words = registry.get_sample_value("pqm_correction_words_total", {"method": method})
    errors = registry.get_sample_value("pqm_correction_word_errors_total", {"method": method})
    return (words or 0.0, errors or 0.0)


def test_a_correction_counts_the_served_transcripts_errors_once() -> None:
    metrics = Metrics()
    served = ServedTranscripts(metrics)
    served.remember("r1", "alice", "lora", "please open the widow", audio_seconds=3.0)

    assert not served.count_correction("r1", "bob", "Please open the window.")
    assert served.count_correction("r1", "alice", "Please open the window.")
    assert not served.count_correction("r1", "alice", "Please open the window.")

    assert counted(metrics, "lora") == (4.0, 1.0)
    assert counted(metrics, "base") == (0.0, 0.0)


def test_stale_and_long_transcripts_are_not_counted() -> None:
    metrics, clock = Metrics(), Clock()
    served = ServedTranscripts(metrics, ttl_s=60.0, max_audio_seconds=30.0, clock=clock)
    served.remember("long", "alice", "base", "hello", audio_seconds=31.0)
    served.remember("stale", "alice", "base", "hello", audio_seconds=1.0)
    clock.now = 60.5
    served.remember("fresh", "alice", "base", "hello", audio_seconds=1.0)
    clock.now = 61.0

    assert not served.count_correction("long", "alice", "hello")
    assert not served.count_correction("stale", "alice", "hello")
    assert served.count_correction("fresh", "alice", "hello there")
    assert counted(metrics, "base") == (2.0, 1.0)


def test_the_oldest_are_forgotten_past_the_capacity() -> None:
    metrics = Metrics()
    served = ServedTranscripts(metrics, capacity=2)
    for request_id in ("first", "second", "third"):
        served.remember(request_id, "alice", "base", "hello", audio_seconds=1.0)

    assert not served.count_correction("first", "alice", "hello")
    assert served.count_correction("second", "alice", "hello")
    assert served.count_correction("third", "alice", "hello")
