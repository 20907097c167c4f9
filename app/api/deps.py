"""Dependencies shared by the routers, as `Annotated` aliases."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.services.auth import Principal, authenticate
from app.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.pqm
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    async with state.sessions() as session, session.begin():
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def get_principal(request: Request, state: StateDep, session: SessionDep) -> Principal:
    return await authenticate(session, _bearer_token(request), state.admin_key)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
