"""ASGI middleware that refuses requests before their body is read: wrong API key, body too large.

The API key is checked here rather than in a route dependency because FastAPI parses a form body
before it runs dependencies: an unauthenticated client could otherwise make the server read and
spool a full upload. The body size is checked against ``Content-Length`` first, then counted while
the body streams in (a client can omit or understate the header); the overflow raises an
``HTTPException`` so that FastAPI, which turns other errors met while parsing a form into
400, passes it on to the app's JSON error handler.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_KEY_HEADER = "X-API-Key"


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented API key with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def too_large_message(limit: int) -> str:
    """The 413 message for a body over ``limit`` bytes."""
    mib = f" ({limit / 2**20:.1f} MiB)" if limit >= 2**20 else ""
    return (
        f"request body is larger than this server's limit of {limit:,} bytes{mib}; "
        "send a smaller image or raise --max-upload-mb"
    )


def unauthorized_message() -> str:
    """The 401 message."""
    return f"missing or wrong API key: send it in the {API_KEY_HEADER} header"


class BodyTooLarge(HTTPException):
    """The body grew past the limit while streaming in."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(limit))


class Guard:
    """Refuse over-limit bodies everywhere and keyless requests to ``protected`` paths.

    Args:
        app: the wrapped ASGI app.
        max_body: the largest request body in bytes.
        api_key: the expected ``X-API-Key`` value, or None for no key.
        protected: paths that need the key (exact matches).
    """

    def __init__(
        self, app: ASGIApp, *, max_body: int, api_key: str | None, protected: Collection[str]
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.api_key = api_key
        self.protected = frozenset(protected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then pass it on with a byte-counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if (
            self.api_key is not None
            and scope["path"] in self.protected
            and scope["method"] != "OPTIONS"
            and not key_matches(headers.get(API_KEY_HEADER), self.api_key)
        ):
            response = JSONResponse(
                {"detail": unauthorized_message()},
                status_code=401,
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )
            await response(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
            response = JSONResponse(
                {"detail": too_large_message(self.max_body)},
                status_code=413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        limit = self.max_body
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)
