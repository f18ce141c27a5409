"""What stands in front of the ingress's routes: the request-size limit.

A plain ASGI middleware on the FastAPI app, so it acts before a route reads the body, and its
refusal is an OpenAI-shaped error.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def openai_error(
    status: int, message: str, kind: str, param: str | None = None,
    code: str | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# -- the request-size limit --------------------------------------------------------------------


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once the body read so far passes the limit; the app answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large(limit))


def too_large(limit: int) -> str:
    return f"the request body is larger than this server's limit of {limit} bytes"


class BodyLimit:
    """Refuses a request body over `max_bytes` (413) without reading the rest of it.

    A Content-Length over the limit is refused before the body is touched; a body without one
    (chunked) is counted as the app reads it, and reading stops at the first chunk past the
    limit. Answering is what stops the body: Serve forwards it only while the request lasts.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await openai_error(413, too_large(self.max_bytes), "invalid_request_error",
                               code="request_too_large")(scope, receive, send)
            return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)
