"""The request's database transaction: committed before the client hears back."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from starlette.types import Message, Receive, Scope, Send

from app.db.models import User
from app.state import ServiceState
from tests.conftest import ADMIN


class _UsersSeenAtResponse:
    """Wraps the app: when the response starts, counts the users another connection sees."""

    def __init__(self, app: FastAPI, state: ServiceState) -> None:
        self._app = app
        self._state = state
        self.counts: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                async with self._state.sessions() as session:
                    self.counts.append(await session.scalar(select(func.count(User.id))) or 0)
            await send(message)

        await self._app(scope, receive, observed_send)


@pytest.fixture
async def observed(
    app: FastAPI, state: ServiceState
) -> AsyncIterator[tuple[httpx.AsyncClient, _UsersSeenAtResponse]]:
    wrapper = _UsersSeenAtResponse(app, state)
    transport = httpx.ASGITransport(app=wrapper)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http, wrapper


async def test_a_write_is_committed_before_the_response_starts(
    observed: tuple[httpx.AsyncClient, _UsersSeenAtResponse],
) -> None:
    client, wrapper = observed
    response = await client.post("/v1/users", json={"name": "alice"}, headers=ADMIN)
    assert response.status_code == 201
    # A client that reads right after its write (POST then GET) must see it.
    assert wrapper.counts == [1]
