"""What the server refuses before a request reaches a handler, and how the refusal reaches the client.

``TokenGate`` asks every request but ``/healthz`` for the access token
(401 without it); ``refuse`` answers an early refusal so that every client
reads it, including one that sends its whole body before reading the
answer (Python's ``urllib`` and ``requests``): it sends the answer, then
reads and discards the rest of the body, bounded in bytes and time, before
it ends the response.  Without that, the server would close a socket that
still has unread data, the kernel would answer the client's next packets
with a reset, and the client would see "connection reset by peer" instead
of the JSON error.
"""
import asyncio
import hmac
import json
import time
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

#: Name of the cookie that carries the token for the page's own requests.
COOKIE = "fer_server_token"
#: At most this many bytes of a refused body are read and discarded...
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024
#: ...within this many seconds; past either, the connection is closed.
DRAIN_LIMIT_S = 15.0


def header(scope, name):
    """The value of request header ``name`` (lower-case bytes) as text, or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def content_length(scope):
    """The request's ``Content-Length`` as an int; None when absent or malformed."""
    value = header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def too_large_message(limit):
    """The error of a 413 for a body over ``limit`` bytes."""
    return f"upload larger than the limit of {limit:,} bytes"


async def buffer_body(scope, receive, send, limit):
    """Read the whole request body before a handler sees it, refusing it past ``limit`` bytes.

    A handler that answers without reading the body (Flask's 415 for a wrong
    content type, say) would otherwise leave unread data on the socket,
    which ends in a reset for clients that send everything first.  Requests
    without a body pass as they are.

    Returns:
        A ``receive`` callable that gives the buffered body as one message
        and then defers to the original one (for ``http.disconnect``), or
        None when the body went past ``limit`` and a 413 was sent
        (``refuse``).
    """
    if content_length(scope) in (None, 0) and header(scope, b"transfer-encoding") is None:
        return receive
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([], message, receive)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            await refuse(scope, receive, send, 413, too_large_message(limit))
            return None
        if not message.get("more_body", False):
            break
    body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
    return _replay([body], None, receive)


def _replay(messages, last, receive):
    pending = list(messages) + ([last] if last else [])

    async def replayed():
        return pending.pop(0) if pending else await receive()

    return replayed


async def refuse(scope, receive, send, status, message, headers=None):
    """Answer ``status`` with ``{"error": message}``, then drain the request body.

    The answer goes out first, so a client that reads early (curl) has it
    at once; then up to ``DRAIN_LIMIT_BYTES`` of the body are read within
    ``DRAIN_LIMIT_S`` seconds and thrown away, so a client that sends
    everything first (``urllib``) can read the answer too; then the
    response ends.  A client that sent ``Expect: 100-continue`` has not
    sent its body and is not asked for it.

    Args:
        scope, receive, send: the ASGI request.
        status: HTTP status code.
        message: the error sentence.
        headers: more response headers, ``{name: value}``.
    """
    items = [(b"content-type", b"application/json"), (b"connection", b"close")]
    items += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": items})
    await send({"type": "http.response.body", "body": json.dumps({"error": message}).encode(),
                "more_body": True})
    if (header(scope, b"expect") or "").lower() != "100-continue":
        await drain(receive)
    await send({"type": "http.response.body", "body": b""})


async def drain(receive, limit_bytes=DRAIN_LIMIT_BYTES, limit_s=DRAIN_LIMIT_S):
    """Read and discard request body messages until the body ends, the client goes, or a limit is hit.

    Returns:
        The number of body bytes discarded.
    """
    deadline = time.monotonic() + limit_s
    discarded = 0
    while discarded <= limit_bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except asyncio.TimeoutError:
            break
        if message["type"] != "http.request":
            break
        discarded += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return discarded


class TokenGate:
    """ASGI middleware: every HTTP request but ``open_paths`` needs the access token.

    The token is accepted from ``Authorization: Bearer <token>`` (API
    clients), from the ``fer_server_token`` cookie (the page's own requests,
    streams and event source), or from ``?token=<token>`` in the URL (how a
    browser arrives, as with Jupyter); the last answer then sets the cookie,
    ``HttpOnly`` and ``SameSite=Strict`` (and ``Secure`` over https).  Every
    comparison takes constant time (``hmac.compare_digest``).  Without a
    valid token: 401 with a JSON error, through ``refuse``.

    Args:
        app: the ASGI application behind the gate.
        token: the token, a non-empty string.
        open_paths: paths served without the token (``/healthz`` for
            health checkers).
    """

    def __init__(self, app, token, open_paths=("/healthz",)):
        if not token:
            raise ValueError("the access token must not be empty")
        self.app = app
        self.token = token.encode("utf-8")
        self.open_paths = frozenset(open_paths)

    def _matches(self, candidate):
        return candidate is not None and hmac.compare_digest(candidate.encode("utf-8"), self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            return await self.app(scope, receive, send)
        authorization = header(scope, b"authorization") or ""
        if authorization[:7].lower() == "bearer " and self._matches(authorization[7:].strip()):
            return await self.app(scope, receive, send)
        if self._matches(self._cookie(scope)):
            return await self.app(scope, receive, send)
        from_url = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
        if self._matches(from_url):
            return await self.app(scope, receive, self._setting_cookie(scope, send))
        await refuse(scope, receive, send, 401, "this server needs its access token: open the URL it "
                     "printed at start-up (/?token=...) or send 'Authorization: Bearer <token>'",
                     {"WWW-Authenticate": "Bearer"})

    @staticmethod
    def _cookie(scope):
        text = header(scope, b"cookie")
        if not text:
            return None
        try:
            morsel = SimpleCookie(text).get(COOKIE)
        except CookieError:
            return None
        return morsel.value if morsel else None

    def _setting_cookie(self, scope, send):
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        value = f"{COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict{secure}"

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", ()),
                                                 (b"set-cookie", value.encode("latin-1"))])
            await send(message)

        return send_with_cookie
