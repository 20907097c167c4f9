"""Prometheus metrics, in a registry owned by the app instance (no process-global state)."""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
LOAD_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._slot_totals: dict[str, int] = {}
        r = self.registry
        self.http_requests = Counter(
            "pqm_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "pqm_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transcriptions = Counter(
            "pqm_transcriptions_total",
            "Transcriptions by outcome and whether an adapter applied.",
            ["outcome", "personalised"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "pqm_queue_wait_seconds",
            "Time a transcription waited before joining a batch.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.transcription_latency = Histogram(
            "pqm_transcription_seconds",
            "Time from queueing a transcription to its transcript (queue wait + model).",
            ["personalised"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "pqm_batch_size",
            "Requests advanced together per model round.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.windows = Counter(
            "pqm_decoded_windows_total",
            "30 s windows transcribed, by the temperature of the decode kept: one above the "
            "request's own was decoded again at each fallback temperature before it.",
            ["temperature", "personalised"],
            registry=r,
        )
        self.audio_seconds = Counter(
            "pqm_audio_seconds_total", "Seconds of audio transcribed.", registry=r
        )
        self.queue_pending = Gauge(
            "pqm_queue_pending", "Transcriptions waiting or running.", registry=r
        )
        self.adapter_cache = Counter(
            "pqm_adapter_cache_events_total",
            "Adapter cache hits, misses, evictions, refusals per tier (host: deserialised "
            "adapters; slots: the model's resident banks).",
            ["tier", "event"],
            registry=r,
        )
        self.adapter_load = Histogram(
            "pqm_adapter_load_seconds",
            "Loading an adapter from the store on a host-cache miss (read, verify, parse).",
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.adapters_resident = Gauge(
            "pqm_adapters_resident",
            "Adapters held per cache tier (host: deserialised; slots: in the model's banks).",
            ["tier"],
            registry=r,
        )
        self.adapter_cache_bytes = Gauge(
            "pqm_adapter_cache_bytes", "Bytes held per adapter cache tier.", ["tier"], registry=r
        )
        self.enrolment_jobs = Gauge(
            "pqm_enrolment_jobs",
            "Enrolment jobs in the database by status.",
            ["status"],
            registry=r,
        )

        self.correction_words = Counter(
            "pqm_correction_words_total",
            "Words in users' corrections of transcripts this service produced, by the method "
            "that produced them (base, lora, saml).",
            ["method"],
            registry=r,
        )
        self.correction_word_errors = Counter(
            "pqm_correction_word_errors_total",
            "Word errors (substitutions, deletions, insertions) those corrections revealed, by "
            "method: divided by pqm_correction_words_total, the word error rate users see.",
            ["method"],
            registry=r,
        )

    def count_slot_events(self, hits: int, misses: int, evictions: int) -> None:
        """Brings the slot-tier counters up to the engine's cumulative counts."""
        for event, total in (("hit", hits), ("miss", misses), ("eviction", evictions)):
            counter = self.adapter_cache.labels("slots", event)
            seen = self._slot_totals.get(event, 0)
            if total > seen:
                counter.inc(total - seen)
                self._slot_totals[event] = total

    def batch(self, size: int) -> None:
        """`BatchObserver`: one model round advanced `size` requests."""
        self.batch_size.observe(size)

    def started(self, waited_s: float) -> None:
        """`BatchObserver`: a request joined a batch after `waited_s` in the queue."""
        self.queue_wait.observe(waited_s)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
