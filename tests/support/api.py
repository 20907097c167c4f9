"""Helpers for API tests."""

import httpx
import httpx2
from fastapi import FastAPI
from openai import AsyncOpenAI


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    """Asserts the status and the exact OpenAI error shape; returns the `error` object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    detail: dict[str, object] = error
    return detail


def openai_client(app: FastAPI, api_key: str) -> AsyncOpenAI:
    """The official client, talking to the ASGI app in-process (the SDK's own httpx fork)."""
    transport = httpx2.ASGITransport(app=app)
    http_client = httpx2.AsyncClient(transport=transport, base_url="http://testserver", timeout=120)
    return AsyncOpenAI(base_url="http://testserver/v1", api_key=api_key, http_client=http_client)
