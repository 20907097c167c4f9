"""What the service answered to recent transcription requests, so that a correction of one can
count the word errors it reveals in `/metrics` (real-world WER, per method).

How a correction names what it corrects: every response carries `X-Request-Id`; a client
saving a correction sends that id as `request_id` with the corrected text. The transcript
served for it is kept here, in memory, bounded and short-lived: the service stores no
transcripts. A correction that arrives after a restart, after `ttl_s`, at another API process,
or a second time for the same request is kept as a recording but not counted.
"""

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.engine.text import word_errors
from app.metrics import Metrics

BASE_METHOD = "base"
"""The method label of transcripts the base model produced (adapters carry their own: `lora`,
`saml`)."""
DEFAULT_CAPACITY = 10_000
DEFAULT_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class _Served:
    user_id: str
    method: str
    text: str
    at: float


class ServedTranscripts:
    def __init__(
        self,
        metrics: Metrics,
        *,
        capacity: int = DEFAULT_CAPACITY,
        ttl_s: float = DEFAULT_TTL_S,
        max_audio_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._max_audio_seconds = max_audio_seconds
        self._clock = clock
        self._served: OrderedDict[str, _Served] = OrderedDict()

    def remember(
        self, request_id: str, user_id: str, method: str, text: str, audio_seconds: float
    ) -> None:
        """`text` was served to `user_id` for `request_id`, by `method`. Only audio a correction
        may hold (`max_audio_seconds`, the recordings' limit) is remembered, which also bounds
        the memory each entry takes."""
        if audio_seconds > self._max_audio_seconds:
            return
        self._served[request_id] = _Served(user_id, method, text, self._clock())
        self._served.move_to_end(request_id)
        while len(self._served) > self._capacity:
            self._served.popitem(last=False)

    def count_correction(self, request_id: str, user_id: str, corrected: str) -> bool:
        """Counts the words of `corrected` and the errors the served transcript made against it,
        once per request; False when there is nothing (of this user's) to count against."""
        served = self._served.get(request_id)
        if served is None or served.user_id != user_id:
            return False
        del self._served[request_id]
        if self._clock() - served.at > self._ttl_s:
            return False
        errors, words = word_errors(corrected, served.text)
        self._metrics.correction_words.labels(served.method).inc(words)
        self._metrics.correction_word_errors.labels(served.method).inc(errors)
        return True
