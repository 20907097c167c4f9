"""The speaker's page: the static files of `app/web`, served at `/` under a strict
Content-Security-Policy (scripts and styles from this origin only, nothing inline)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.errors import NotFoundError

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        # Recordings are played back from blob: URLs made in the page.
        "media-src 'self' blob:",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

FILES = {
    path.relative_to(WEB_DIR).as_posix(): path
    for path in WEB_DIR.rglob("*")
    if path.suffix in MEDIA_TYPES
}
"""What may be served, fixed at start-up: no path from a request reaches the file system."""

router = APIRouter(include_in_schema=False)


def _serve(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise NotFoundError(f"No page file {name!r}.")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/")
async def page() -> FileResponse:
    return _serve("index.html")


@router.get("/web/{name:path}")
async def page_file(name: str) -> FileResponse:
    return _serve(name)
