"""The HTTP server of ``python main.py``: the live streams from one event loop, the rest through Flask.

``create_asgi_app`` puts an ASGI front on the Flask app of
``web.app.create_app``.  The two long-lived streams, ``GET /video_feed``
(MJPEG, ``multipart/x-mixed-replace``) and ``GET /api/events``
(server-sent events), are answered by coroutines on uvicorn's event loop
(``LiveStreams``); every other request goes to Flask, which runs in a pool
of threads (a2wsgi's ``WSGIMiddleware``).

Why not a thread per viewer?  Each published frame would then wake every
viewer's thread, and the threads queue for the GIL.  Here the camera's
capture thread resolves one future on the loop per frame
(``Camera.add_listener`` with ``loop.call_soon_threadsafe``), and each
viewer's coroutine wakes on it and writes the frame's bytes, encoded once
(``Frame.part``).  docs/benchmarks.md gives the cost per
viewer (``python -m bench.clients``).
"""
import asyncio
import json
import logging
from urllib.parse import parse_qs

from fer_server.capture.camera_set import Cameras, UnknownSourceError

from fer_server.web.guards import TokenGate, buffer_body, content_length, refuse, too_large_message
from fer_server.web.prometheus import Metrics
from fer_server.capture.mjpeg import EVENTS_PREAMBLE, EVENTS_TYPE, STREAM_HEADERS, VIDEO_FEED_TYPE, mjpeg_part
from fer_server.web.payloads import events_renderer, model_name

log = logging.getLogger(__name__)


def viewer_limit_message(max_clients):
    """The error of a 503 for a viewer beyond ``max_clients``."""
    return f"this server is at its limit of {max_clients} viewers; try again later"


def _headers(content_type, extra=None):
    items = {"Content-Type": content_type, **(extra or {})}
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in items.items()]


class LiveStreams:
    """The live streams of one ``capture.camera.Camera``, served to any number of viewers from one event loop.

    Args:
        camera: the ``Camera`` whose frames are streamed.
        max_clients: viewers beyond this many (of both streams together)
            get 503 with a JSON error and ``Retry-After: 10``.
        events_renderer: ``() -> render`` giving each ``/api/events`` client
            its ``render(frame) -> str`` (``web.payloads.events_renderer``).
        keepalive_s: seconds without a frame after which each viewer is sent
            the latest frame again (a live source reconnecting), so its
            picture stays and a vanished client's slot is freed.

    A viewer that reads slower than the source skips frames: its coroutine
    waits while the connection's write buffer is full (uvicorn's flow
    control) and then sends the newest frame, so it holds at most that
    buffer and one frame.
    """

    def __init__(self, camera, max_clients, events_renderer, keepalive_s=2.0):
        self.camera = camera
        self.max_clients = max_clients
        self.events_renderer = events_renderer
        self.keepalive_s = keepalive_s
        self._loop = None
        self._next = None  # resolved at the next frame (True) or keepalive (False)
        self._woken_at = 0.0
        self._keepalive_task = None
        self._closing = False

    async def video_feed(self, scope, receive, send):
        """ASGI handler of ``GET /video_feed``: one MJPEG part per new frame (``HEAD``: the headers).

        A frame sent again as a keep-alive goes out as a ``keepalive`` part
        (``capture.mjpeg.PART_KINDS``).
        """
        await self._stream(scope, receive, send, VIDEO_FEED_TYPE,
                           lambda frame, again: mjpeg_part(frame.jpeg, "keepalive") if again else frame.part)

    async def events(self, scope, receive, send):
        """ASGI handler of ``GET /api/events``: ``retry``, then the faces as server-sent events."""
        render = self.events_renderer()
        await self._stream(scope, receive, send, EVENTS_TYPE, lambda frame, again: render(frame).encode(),
                           EVENTS_PREAMBLE.encode())

    async def _stream(self, scope, receive, send, content_type, render, preamble=b""):
        if scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405,
                        "headers": _headers("application/json", {"Allow": "GET, HEAD"})})
            await send({"type": "http.response.body", "body": b'{"error":"method not allowed"}'})
            return
        if scope["method"] == "HEAD":
            await send({"type": "http.response.start", "status": 200,
                        "headers": _headers(content_type, STREAM_HEADERS)})
            await send({"type": "http.response.body", "body": b""})
            return
        if self.camera.clients >= self.max_clients:
            body = json.dumps({"error": viewer_limit_message(self.max_clients)}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": _headers("application/json", {"Retry-After": "10"})})
            await send({"type": "http.response.body", "body": body})
            return
        self._attach()
        viewer = self.camera.connect()  # None once the camera is closed: an empty stream
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(self._watch_disconnect(receive, gone))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": _headers(content_type, STREAM_HEADERS)})
            if preamble:
                await send({"type": "http.response.body", "body": preamble, "more_body": True})
            fresh = True  # the first pass sends a frame already there at once
            last_seq = 0
            while viewer is not None and not gone.is_set() and not self._closing:
                woken = self._next  # read before polling, so no frame is missed
                frame, ended = viewer.poll(repeat=not fresh)
                if ended:
                    break
                body = b""
                if frame is not None:
                    body = render(frame, frame.seq <= last_seq)
                    last_seq = frame.seq
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                fresh = await woken
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            if viewer is not None:
                viewer.close()

    @staticmethod
    async def _watch_disconnect(receive, gone):
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    def shutdown(self):
        """End every stream (each response ends properly) and stop listening to the camera.

        Safe to call from any thread or a signal handler; a no-op before the
        first viewer.
        """
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._close)

    def _attach(self):
        """On first use, in the loop: listen to the camera and start the keepalive."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.create_future()
        self._woken_at = self._loop.time()
        self.camera.add_listener(self._on_frame)
        self._keepalive_task = self._loop.create_task(self._keepalive())

    def _on_frame(self):  # in the camera's thread
        try:
            self._loop.call_soon_threadsafe(self._wake, True)
        except RuntimeError:  # the loop has closed
            pass

    def _close(self):
        self._closing = True
        self.camera.remove_listener(self._on_frame)
        self._keepalive_task.cancel()
        self._wake(False)

    def _wake(self, fresh):
        woken, self._next = self._next, self._loop.create_future()
        self._woken_at = self._loop.time()
        woken.set_result(fresh)

    async def _keepalive(self):
        while True:
            await asyncio.sleep(max(0.05, self._woken_at + self.keepalive_s - self._loop.time()))
            if self._loop.time() - self._woken_at >= self.keepalive_s:
                self._wake(False)


def create_asgi_app(app, cameras, config, render_events=None):
    """The ASGI application of the server.

    Args:
        app: the Flask app of ``web.app.create_app`` (every route but the streams).
        cameras: the ``capture.camera_set.Cameras`` to stream, by name; the first one
            also serves the routes without a source name.  A single
            ``capture.camera.Camera`` is served as ``cam0``.
        config: the ``config.Config``: ``max_clients``, ``events_interval_s``,
            ``max_upload_bytes``, and ``token`` (None: no token asked).
        render_events: ``() -> render(frame) -> str`` for ``/api/events``
            of the first source (default: ``web.payloads.events_renderer`` of ``camera``).

    Returns:
        An ASGI callable.  From the outside in: the request counter of
        ``/metrics``; with ``config.token``, the ``web.guards.TokenGate`` (401
        without the token; ``/healthz`` open); a body over
        ``max_upload_bytes`` refused with 413 (by its ``Content-Length``,
        or while it is read); then ``/video_feed``, ``/video_feed/<name>``
        and ``/api/events[?source=<name>]`` go to that source's
        ``LiveStreams`` (405 to methods other than ``GET`` and ``HEAD``; 404
        JSON for an unknown name), ``/metrics`` (the first source's
        figures) to ``web.prometheus.Metrics``, and every other request, its body
        read first, to Flask through a pool of ``max_clients + 8`` threads.
        Its ``streams`` attribute is the first source's ``LiveStreams``,
        ``all_streams`` every source's by name, ``metrics`` the ``Metrics``.
        Every recorded source starts capturing here and keeps capturing
        without viewers (``Cameras.start_recording``).
    """
    from a2wsgi import WSGIMiddleware

    if not isinstance(cameras, Cameras):
        cameras = Cameras({"cam0": cameras})
    cameras.start_recording()  # a recorded source records all day, whether or not a page is open
    camera = cameras.first
    model = model_name(getattr(camera.pipeline, "classifier", None))
    all_streams = {}
    for name, one in cameras:
        renderer = render_events if one is camera and render_events else events_renderer(
            one, model, config.events_interval_s, name)
        all_streams[name] = LiveStreams(one, config.max_clients, renderer)
    streams = all_streams[cameras.names[0]]
    metrics = Metrics(camera)
    camera.add_frame_observer(metrics.observe_frame)
    routes = {"/video_feed": streams.video_feed, "/api/events": streams.events, "/metrics": metrics.endpoint}
    flask = WSGIMiddleware(app, workers=config.max_clients + 8)
    limit = config.max_upload_bytes

    def source_route(scope):
        """The stream handler of a named source, or None when the path is no stream with a name."""
        path = scope.get("path", "")
        if path.startswith("/video_feed/"):
            return all_streams_get(path[len("/video_feed/"):]).video_feed
        if path == "/api/events":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            name = query.get("source", [""])[0]
            return all_streams_get(name).events if name else None
        return None

    def all_streams_get(name):
        cameras.get(name)  # raises UnknownSourceError with the list of names
        return all_streams[name]

    async def front(scope, receive, send):
        if scope["type"] != "http":
            return await flask(scope, receive, send)
        length = content_length(scope)
        if length is not None and length > limit:
            return await refuse(scope, receive, send, 413, too_large_message(limit))
        try:
            handler = source_route(scope) or routes.get(scope.get("path"))
        except UnknownSourceError as e:
            await send({"type": "http.response.start", "status": 404, "headers": _headers("application/json")})
            await send({"type": "http.response.body", "body": json.dumps({"error": str(e)}).encode()})
            return
        if handler is not None:
            return await handler(scope, receive, send)
        receive = await buffer_body(scope, receive, send, limit)
        if receive is not None:  # None: refused while reading
            await flask(scope, receive, send)

    counted = metrics.count_requests(TokenGate(front, config.token) if config.token else front)

    async def asgi(scope, receive, send):
        await counted(scope, receive, send)

    asgi.streams = streams
    asgi.all_streams = all_streams
    asgi.metrics = metrics
    return asgi


#: Connections beyond the viewers' own limits, for the page, the JSON API and /healthz.
API_HEADROOM = 32


def connection_limit(config, sources):
    """uvicorn's limit on open connections: ``max_clients`` viewers for each source, plus ``API_HEADROOM``.

    ``--max-clients`` applies to each source (``LiveStreams`` refuses the
    viewer beyond it with a 503 JSON); this server-wide cap must leave room
    for every source's viewers at once, or the viewers of one source would
    use up another's.
    """
    return config.max_clients * max(1, sources) + API_HEADROOM


def serve(app, cameras, config, listener, log_level="info"):
    """Serve ``create_asgi_app(app, cameras, config)`` with uvicorn on ``listener`` until Ctrl-C.

    ``listener`` is a bound, listening socket (``cli.bind``), so the port
    is known to be free before the model loads.

    uvicorn takes uvloop and httptools when they are installed (they are on
    Linux and macOS, see requirements.txt).  Connections beyond
    ``connection_limit`` (``max_clients`` per source + 32) get 503; a connection is closed when its
    first request has not arrived whole after ``config.request_timeout_s``
    (30 s), or when it stays idle for 5 s after a response; Ctrl-C (or
    SIGTERM) ends the streams, waits up to 3 s for other requests, and
    returns.  With ``config.certfile`` and ``config.keyfile`` it serves
    https (TLS) instead of http.
    """
    asgi = create_asgi_app(app, cameras, config)
    tls = {"ssl_certfile": str(config.certfile), "ssl_keyfile": str(config.keyfile)} if config.certfile else {}
    server = make_server(asgi, request_timeout_s=config.request_timeout_s, **tls,
                         lifespan="off", access_log=log_level == "debug", log_config=None,
                         log_level=log_level, server_header=False,
                         limit_concurrency=connection_limit(config, len(cameras.names)),
                         timeout_graceful_shutdown=3)
    server.run(sockets=[listener])


def make_server(asgi, request_timeout_s, **options):
    """A ``uvicorn.Server`` for ``create_asgi_app``'s ``asgi``, with two additions.

    - Ctrl-C (or SIGTERM) first ends the streams of every source (``LiveStreams.shutdown``);
      uvicorn alone would wait for them and then cut them.
    - A connection that has not sent a whole request ``request_timeout_s``
      seconds after it opened is closed.  uvicorn has no such timeout (its
      keep-alive timer starts after a first response: Kludex/uvicorn#1192),
      so idle or trickling clients (slowloris) would hold connection slots
      for good.  This reads uvicorn's ``server_state.connections`` and each
      connection's ``cycle``, checked every second; tests/test_server.py fails
      if an upgrade changes them.

    Args:
        asgi: from ``create_asgi_app``.
        request_timeout_s: seconds.
        options: ``uvicorn.Config`` arguments.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def __init__(self, config):
            super().__init__(config)
            self.opened_at = {}  # connection -> loop time it was first seen without a request

        def handle_exit(self, sig, frame):
            for streams in getattr(asgi, "all_streams", {"": asgi.streams}).values():
                streams.shutdown()
            super().handle_exit(sig, frame)

        async def on_tick(self, counter):
            if counter % 10 == 0:  # ticks are 0.1 s apart
                self.close_silent_connections()
            return await super().on_tick(counter)

        def close_silent_connections(self):
            now = asyncio.get_running_loop().time()
            connections = self.server_state.connections
            for connection in list(self.opened_at):
                if connection not in connections or getattr(connection, "cycle", None) is not None:
                    del self.opened_at[connection]  # gone, or its request arrived
            for connection in connections:
                if getattr(connection, "cycle", None) is None:
                    opened = self.opened_at.setdefault(connection, now)
                    if now - opened >= request_timeout_s:
                        log.info("closing a connection with no request after %.0f s", now - opened)
                        connection.transport.close()
                        del self.opened_at[connection]

    return Server(uvicorn.Config(asgi, **options))
