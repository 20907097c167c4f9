"""Service configuration, read from the environment (prefix `PQM_`, nested groups with `__`)."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.engine.types import ComputeDtype, EncoderWindow, Precision, TrainingPriority

MIB = 1024 * 1024
WEAK_ADMIN_KEY_LENGTH = 24


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "pqm"


class SettingsGroup(BaseModel):
    """A nested group (`PQM_<GROUP>__<NAME>`): a misspelt name is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ModelSettings(SettingsGroup):
    path: Path | None = None
    """A local transformers Whisper directory; unset: import the bundled model on start."""
    bundled: Literal["tiny.en", "base"] = "tiny.en"
    """Which bundled model to import when `path` is unset (`base` needs the `[base]` extra)."""
    id: str | None = None
    """The id clients pass as `model`; defaults to the model's own id (e.g. `whisper-tiny.en`)."""
    precision: Precision = "nf4"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads for inference; unset keeps torch's default."""
    compute_dtype: ComputeDtype = "auto"
    """What the projections compute in: `auto` is bfloat16 for quantised weights on CPUs with
    AVX512-BF16 (and on CUDA), float32 otherwise; the weights stay quantised at rest."""
    encoder_window: EncoderWindow = "full"
    """The encoder input of requests served by the base model: `full` (Whisper's 30 s) or
    `fit10` (the speech plus a second, at least 10 s). Adapters use the window they were
    trained on."""


class LongformSettings(SettingsGroup):
    """Audio longer than one 30 s window (`WhisperEngine`'s long-form walk)."""

    mode: Literal["sequential", "batched"] = "sequential"
    """`sequential`: Whisper's algorithm, a window at a time, each placed after the last
    complete segment. `batched`: cut at pauses by a voice-activity detector (Silero VAD) into
    windows decoded together as rows of one batch."""
    window_s: float = Field(default=30.0, ge=1.0, le=30.0)
    """Batched: the longest window."""
    adapter_window_s: float = Field(default=30.0, ge=1.0, le=30.0)
    """Batched, for a speaker with an adapter: the longest window."""
    batch_windows: int = Field(default=8, ge=1)
    """Batched: windows of one request decoded together (bounds a request's memory)."""
    condition_on_previous_text: bool = False
    """Sequential: each window's prefix carries the text of the windows before it (Whisper's
    default, off here: one window's error or loop runs on into the next)."""


class QueueSettings(SettingsGroup):
    max_pending: int = Field(default=64, ge=1)
    """Transcriptions waiting or running at once; beyond it the API answers 503 + Retry-After."""
    max_pending_audio_s: float = Field(default=8 * 3600, gt=0)
    """Seconds of audio in the transcriptions waiting or running at once; beyond it the API
    answers 503 + Retry-After too (a request alone is always admitted: `max_audio_seconds`
    bounds it). Long audio waits spooled to a temporary file: this also bounds that disk use."""
    retry_after_s: int = Field(default=2, ge=1)
    max_batch_size: int = Field(default=8, ge=1)
    """Requests the model advances together in one pass."""
    max_wait_ms: float = Field(default=10.0, ge=0)
    """How long a request that arrives at an idle model waits for others to batch with."""


class AdapterCacheSettings(SettingsGroup):
    """The adapter cache tiers in front of the adapter store."""

    enabled: bool = True
    """Serve personalised adapters at all; `false` runs the bare base model (no LoRA banks)."""
    resident_slots: int | None = Field(default=None, ge=1)
    """Adapters held in the model's banks (device memory), least recently used evicted; at
    least `queue.max_batch_size`, so that a full batch of different users fits. Unset: 16 on
    the CPU; on CUDA, as many as fit in the device memory left free once the model is loaded,
    beside the KV caches of a full batch (`engine.memory_plan`)."""
    host_cache_mb: int = Field(default=128, ge=1)
    """Budget for deserialised adapters in host memory, least recently used evicted; adapter
    loads in flight (the file and its parsed copy) count against it too."""


class EnrolmentSettings(SettingsGroup):
    """Limits on what an enrolment upload may hold, and how its training job runs."""

    max_upload_bytes: int = Field(default=200 * MIB, ge=1)
    min_utterances: int = Field(default=10, ge=2)
    max_utterances: int = Field(default=200, ge=2)
    max_file_bytes: int = Field(default=10 * MIB, ge=1)
    min_file_seconds: float = Field(default=0.3, gt=0)
    max_file_seconds: float = Field(default=30.0, gt=0, le=30.0)
    """Training sees one 30 s window per utterance, so longer recordings are refused."""
    max_total_seconds: float = Field(default=1800.0, gt=0)
    max_transcript_chars: int = Field(default=400, ge=1)
    gate_folds: int = Field(default=4, ge=2)
    """The activation gate's k-fold cross-validation over the upload (see `training.gate`)."""
    gate_confidence: float = Field(default=0.7, ge=0.5, lt=1.0)
    """How sure the gate must be (one-sided, paired bootstrap) that the new adapter saves word
    errors over what the user is served now."""
    gate_min_words_saved: int = Field(default=2, ge=0)
    training_threads: int = Field(default=1, ge=1)
    """torch threads of the training process; the rest of the cores keep serving."""
    training_priority: TrainingPriority = "idle"
    """CPU priority of the training process: `idle` (Linux SCHED_IDLE: it runs only on CPU time
    serving leaves unused), `low` (nice 19) or `normal`."""
    joined_windows: bool = False
    """Also train each adapter on the recordings joined into long-form windows, with and without
    timestamps: it then keeps its gain on long audio, which an adapter trained on single
    recordings may lose (README, Long audio), at about twice the training time."""
    worker: bool = True
    """Run the job worker inside the API process (`pqm worker` runs it separately): with
    PostgreSQL a procrastinate worker, with SQLite a loop over the queued rows."""
    poll_interval_s: float = Field(default=1.0, gt=0)
    """SQLite: how often the loop looks for queued jobs. PostgreSQL: procrastinate's fallback
    poll; LISTEN/NOTIFY wakes the worker as soon as a job is deferred."""
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    """How often a running job records its progress, and procrastinate its worker's heartbeat;
    also how often the recovery sweep runs beside a procrastinate worker."""
    stale_after_s: float = Field(default=60.0, gt=0)
    """A running job whose heartbeat (or, with PostgreSQL, whose procrastinate worker's
    heartbeat) is older than this lost its worker and is recovered."""
    max_attempts: int = Field(default=2, ge=1)
    """Runs of a job that a stopped worker may cost; then it fails, saying so."""
    queue_jobs_kept_h: int = Field(default=168, ge=1)
    """PostgreSQL: procrastinate's own record of a finished job (its dispatch; the job row
    stays) is deleted this many hours after it ended, by each worker's hourly sweep."""
    auto_retrain_after: int = Field(default=0, ge=0)
    """Off at 0 (the default). Otherwise, once a user has added this many recordings on their
    own (`POST /v1/users/{id}/recordings`: corrections and prompts read one at a time, not the
    files of an enrolment upload) since their last enrolment job was created, whatever became
    of that job, the service queues a retraining on their stored recordings by itself (the
    newest that fit an enrolment's limits). Never while the user has a job queued or running;
    the gate decides activation as for any job."""
    auto_retrain_max_concurrent: int = Field(default=1, ge=1)
    """Automatic jobs queued or running at once, service-wide: training slows serving on small
    machines. A user held back by it gets their job with their next recording."""


class QuotaSettings(SettingsGroup):
    """What one user may keep: recordings uploaded to enrol or as corrections."""

    max_recordings: int = Field(default=2000, ge=1)
    max_recording_seconds: float = Field(default=4 * 3600, gt=0)
    """Seconds of audio in all of a user's recordings together."""


class InviteLinkSettings(SettingsGroup):
    expires_after_s: int = Field(default=24 * 3600, ge=60)
    """How long a new invite link works, unless its creator asks for less."""
    max_expires_after_s: int = Field(default=7 * 24 * 3600, ge=60)
    """The longest a creator may ask for."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PQM_", env_nested_delimiter="__", env_file=None, extra="ignore"
    )

    environment: Literal["local", "production"] = "local"
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None
    """SQLAlchemy URL; unset means a SQLite file in the data directory."""
    database_wait_s: float = Field(default=60.0, ge=0)
    """How long `pqm serve` and `pqm worker` wait at start for a database server that does not
    accept connections yet (retrying with growing pauses, one log line each) before they exit
    non-zero; 0 tries once. Not used with SQLite."""
    admin_key: SecretStr | None = None
    """Unset: one is generated on first start, stored (mode 0600) in the data directory."""
    max_upload_bytes: int = Field(default=25 * MIB, ge=1)
    max_audio_seconds: float = Field(default=4 * 3600, gt=0)
    max_adapter_bytes: int = Field(default=64 * MIB, ge=1)
    """Largest adapter file an import accepts (413 above it)."""
    adapter_store: Literal["sql", "filesystem"] = "sql"
    """Where adapter weights live: blobs in the database, or files under `<data_dir>/adapters`."""
    log_level: str = "INFO"
    log_json: bool = True
    model: ModelSettings = Field(default_factory=ModelSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    longform: LongformSettings = Field(default_factory=LongformSettings)
    adapters: AdapterCacheSettings = Field(default_factory=AdapterCacheSettings)
    enrolment: EnrolmentSettings = Field(default_factory=EnrolmentSettings)
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)
    links: InviteLinkSettings = Field(default_factory=InviteLinkSettings)
    public_url: str | None = None
    """The service's address as speakers reach it, for invite links (e.g.
    `https://pqm.example.org`); unset: the address the link's creator used."""

    @model_validator(mode="after")
    def _slots_fit_a_batch(self) -> "Settings":
        slots = self.adapters.resident_slots
        if slots is not None and slots < self.queue.max_batch_size:
            raise ValueError(
                "adapters.resident_slots must be at least queue.max_batch_size "
                f"({self.adapters.resident_slots} < {self.queue.max_batch_size})"
            )
        return self

    @model_validator(mode="after")
    def _link_default_within_its_maximum(self) -> "Settings":
        if self.links.expires_after_s > self.links.max_expires_after_s:
            raise ValueError(
                "links.expires_after_s must be at most links.max_expires_after_s "
                f"({self.links.expires_after_s} > {self.links.max_expires_after_s})"
            )
        return self

    @model_validator(mode="after")
    def _refuse_weak_admin_key_in_production(self) -> "Settings":
        if self.environment != "production":
            return self
        key = self.admin_key.get_secret_value() if self.admin_key else ""
        if len(key) < WEAK_ADMIN_KEY_LENGTH:
            raise ValueError(
                f"PQM_ADMIN_KEY must be set to a random string of at least "
                f"{WEAK_ADMIN_KEY_LENGTH} characters in production"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'pqm.db'}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin_key"
