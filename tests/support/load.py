"""Clients that transcribe in a loop through one URL, recording what each request got."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True, slots=True)
class Outcome:
    client: int
    request_id: str
    started: float
    ended: float
    status: int
    """0 when no response came at all (the connection failed)."""
    adapter: str | None
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return self.status == 200


async def transcribe(
    http: httpx.AsyncClient, url: str, key: str, wav: bytes, client: int = 0
) -> Outcome:
    request_id = f"load-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {key}", "X-Request-Id": request_id}
    started = time.monotonic()
    try:
        response = await http.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1"},
            headers=headers,
        )
    except httpx.TransportError:
        return Outcome(client, request_id, started, time.monotonic(), 0, None, None)
    return Outcome(
        client,
        request_id,
        started,
        time.monotonic(),
        response.status_code,
        response.headers.get("x-adapter-id"),
        response.headers.get("retry-after"),
    )


@dataclass
class Load:
    """`async with Load(url, key, wav) as load:` keeps `clients` transcriptions going, each client
    sending its next request once its last is answered (after `pause_s` when it was refused)."""

    url: str
    key: str
    wav: bytes
    clients: int = 8
    pause_s: float = 0.2
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _client(self, index: int) -> None:
        async with httpx.AsyncClient(timeout=300) as http:
            while not self._stop.is_set():
                outcome = await transcribe(http, self.url, self.key, self.wav, index)
                self.outcomes.append(outcome)
                if not outcome.ok:
                    await asyncio.sleep(self.pause_s)

    def answered_since(self, moment: float) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.ended > moment]

    def every_client_served_since(self, moment: float) -> bool:
        served = {outcome.client for outcome in self.answered_since(moment) if outcome.ok}
        return len(served) == self.clients

    def served_since(self, moment: float) -> Callable[[], Awaitable[bool]]:
        """A check for `until`: every client got a success answered after `moment`."""

        async def check() -> bool:
            return self.every_client_served_since(moment)

        return check

    def all_served_again_after(self, moment: float) -> float:
        """Seconds from `moment` until the last client got its first success after it."""
        firsts = [
            min(o.ended for o in self.answered_since(moment) if o.ok and o.client == client)
            for client in range(self.clients)
        ]
        return max(firsts) - moment

    async def __aenter__(self) -> "Load":
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
