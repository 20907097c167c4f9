"""Dependencies shared by the routers, as `Annotated` aliases."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.session import transaction
from app.services.auth import Principal, authenticate
from app.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.pqm
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    async with transaction(state.sessions) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a client that reads
# right after a write (POST then GET) sees it.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


PRINCIPAL_SCOPE_KEY = "pqm.principal"
"""Where `AuthenticateFirstMiddleware` leaves the principal it authenticated."""


def _bearer_token(authorization: str) -> str | None:
    # RFC 7235: the scheme is case-insensitive; blanks around the token are tolerated.
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def authenticate_header(state: ServiceState, authorization: str) -> Principal:
    """The principal an `Authorization` header value stands for, or UnauthorizedError."""
    # A session of its own, closed at once: a long route (a transcription) holds no connection.
    async with state.sessions() as session:
        return await authenticate(session, _bearer_token(authorization), state.admin_key)


async def get_principal(request: Request, state: StateDep) -> Principal:
    authenticated = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if isinstance(authenticated, Principal):
        return authenticated
    # Requests with a body were authenticated before it was read (AuthenticateFirstMiddleware).
    return await authenticate_header(state, request.headers.get("authorization", ""))


PrincipalDep = Annotated[Principal, Depends(get_principal)]
