"""Prometheus metrics, in a registry owned by the app instance (no process-global state)."""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
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
            "Time a transcription waited for the inference thread.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "pqm_inference_seconds",
            "Model time per transcription.",
            buckets=LATENCY_BUCKETS,
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
            "Adapter cache hits, misses, evictions, refusals.",
            ["event"],
            registry=r,
        )
        self.adapters_resident = Gauge(
            "pqm_adapters_resident", "Deserialised adapters held in memory.", registry=r
        )
        self.enrolment_jobs = Gauge(
            "pqm_enrolment_jobs",
            "Enrolment jobs in the database by status.",
            ["status"],
            registry=r,
        )

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
