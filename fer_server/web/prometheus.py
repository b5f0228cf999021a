"""``GET /metrics``: the server's figures in the Prometheus text format, through ``prometheus_client``.

Exported (each registry belongs to one server, so tests and several servers
in one process do not share counters):

- ``fer_frames_processed_total``: frames read from the source and processed.
- ``fer_stage_seconds``: histogram of the time per frame of each pipeline
  stage (label ``stage``: ``decode``, ``detect``, ``classify``, ``draw``,
  ``encode``, ``total``).
- ``fer_faces_per_frame``: histogram of the faces found per frame.
- ``fer_label_lag_frames``: histogram, over frames with a face, of the
  frames between the frame and the oldest crop behind a label it shows
  (``capture.camera.Frame.label_lag``; 0 when every face was classified on it).
- ``fer_background_faces_classified_total``: faces classified by the
  background classifier (``vision.background``) for every source together;
  absent without one.
- ``fer_viewers``: stream viewers connected now.
- ``fer_source_state``: 1 for the source's current state (label ``state``:
  ``idle``, ``streaming``, ``reconnecting``, ``ended``, ``error``), 0 for the others.
- ``fer_seconds_since_last_frame``: -1 while the capture thread is idle.
- ``fer_http_requests_total``: answered requests (labels ``route``, one of
  the server's paths or ``other``, and ``status``).
"""
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Source states, as ``capture.camera.Camera.state`` names them.
STATES = ("idle", "streaming", "reconnecting", "ended", "error")
#: Paths counted under their own name in ``fer_http_requests_total``; every other is ``other``.
ROUTES = ("/", "/video_feed", "/api/events", "/api/faces", "/api/predict", "/healthz", "/metrics")
#: Histogram buckets in seconds, from 0.5 ms to 1 s.
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Histogram buckets of label lag, in frames.
LAG_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)


class _CameraCollector:
    """Reads the camera's counters at scrape time (nothing is copied per frame)."""

    def __init__(self, camera):
        self.camera = camera

    def collect(self):
        camera = self.camera
        yield CounterMetricFamily("fer_frames_processed", "Frames read from the source and processed.",
                                  value=camera.frames_processed)
        yield GaugeMetricFamily("fer_viewers", "Stream viewers connected now.", value=camera.clients)
        background = getattr(getattr(camera, "pipeline", None), "background", None)
        if background is not None:
            yield CounterMetricFamily("fer_background_faces_classified",
                                      "Faces classified by the background classifier, all sources.",
                                      value=background.faces_classified)
        state = GaugeMetricFamily("fer_source_state", "1 for the source's current state.", labels=["state"])
        for name in STATES:
            state.add_metric([name], 1.0 if camera.state == name else 0.0)
        yield state
        age = camera.seconds_since_frame()
        yield GaugeMetricFamily("fer_seconds_since_last_frame",
                                "Seconds since the source's last frame; -1 while idle.",
                                value=-1.0 if age is None else age)


class Metrics:
    """The figures of one server: its camera's, its frames' and its HTTP answers'.

    Args:
        camera: the ``capture.camera.Camera``; ``observe_frame`` is added as one of
            its frame observers by the caller (``capture.camera.add_frame_observer``).
    """

    def __init__(self, camera):
        self.registry = CollectorRegistry()
        self.registry.register(_CameraCollector(camera))
        self.stage_seconds = Histogram("fer_stage_seconds", "Time per frame of each pipeline stage.",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.faces = Histogram("fer_faces_per_frame", "Faces found per frame.",
                               buckets=(0, 1, 2, 3, 5, 8, 13), registry=self.registry)
        self.label_lag = Histogram("fer_label_lag_frames", "Frames between a frame with a face and the oldest "
                                   "crop behind a label it shows.", buckets=LAG_BUCKETS, registry=self.registry)
        self.requests = Counter("fer_http_requests", "Answered HTTP requests.", ["route", "status"],
                                registry=self.registry)

    def observe_frame(self, frame):
        """Record one published ``capture.camera.Frame``: its stage timings (ms) and face count."""
        for stage, ms in frame.timings.items():
            self.stage_seconds.labels(stage).observe(ms / 1e3)
        if frame.timings:  # placeholders have no timings and no faces worth counting
            self.faces.observe(len(frame.faces))
            if frame.faces:
                self.label_lag.observe(frame.label_lag)

    def count_requests(self, app):
        """ASGI middleware around ``app`` that counts each answer by route and status."""
        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            route = scope.get("path") if scope.get("path") in ROUTES else "other"

            async def counting_send(message):
                if message["type"] == "http.response.start":
                    self.requests.labels(route, str(message["status"])).inc()
                await send(message)

            await app(scope, receive, counting_send)

        return counted

    async def endpoint(self, scope, receive, send):
        """ASGI handler of ``GET /metrics``."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE.encode())]})
        await send({"type": "http.response.body", "body": generate_latest(self.registry)})
