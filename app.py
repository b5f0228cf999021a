"""The Flask application: the page, the MJPEG stream, and the JSON API."""
import json
import threading
import time

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from builders import build_camera, build_pipeline
from camera import BOUNDARY
from config import Config
from images import ImageError, decode_image


def faces_payload(faces, width, height, model):
    """The JSON shape shared by ``/api/predict``, ``/api/faces`` and ``/api/events``."""
    return {"faces": [face.to_json() for face in faces], "width": width, "height": height,
            "model": model}


def live_payload(camera, frame, model):
    """The JSON of ``/api/faces`` and ``/api/events``: ``faces_payload`` plus the source's state."""
    payload = faces_payload(frame.faces if frame else [], frame.width if frame else None,
                            frame.height if frame else None, model)
    payload.update(source=camera.name, notice=camera.notice, error=camera.error,
                   state=camera.state, frame=frame.seq if frame else None)
    return payload


def events_renderer(camera, model, interval_s):
    """A new ``render(frame) -> str`` for one ``/api/events`` client.

    It gives the server-sent event of ``live_payload`` (``data: {...}``
    and a blank line), or "" when less than ``interval_s`` seconds passed
    since the last event it gave.
    """
    last = [0.0]

    def render(frame):
        if time.monotonic() - last[0] < interval_s:
            return ""
        last[0] = time.monotonic()
        return f"data: {json.dumps(live_payload(camera, frame, model))}\n\n"

    return render


#: The first message of ``/api/events``: clients reconnect 2 s after a drop.
EVENTS_PREAMBLE = "retry: 2000\n\n"
#: Content types of ``/video_feed`` (MJPEG) and ``/api/events``, and the
#: headers of both streams: not cached, not buffered by a proxy.
VIDEO_FEED_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
EVENTS_TYPE = "text/event-stream"
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def viewer_limit_message(max_clients):
    """The error of a 503 for a viewer beyond ``max_clients``."""
    return f"this server is at its limit of {max_clients} viewers; try again later"


def create_app(config=None, camera=None):
    """Application factory.

    Args:
        config: a ``config.Config``; defaults to ``Config()``.
        camera: an existing ``camera.Camera``; built from ``config`` if None.

    Routes:
        ``GET /``: the page: live stream, faces and their probabilities, upload, browser camera.
        ``GET /video_feed``: MJPEG, ``multipart/x-mixed-replace; boundary=frame``.
        ``GET /healthz``: source state, frames processed, clients, seconds since
            the last frame; 503 when streaming has stalled or failed.
        ``GET /api/faces``: the faces of the latest frame.
        ``GET /api/events``: the same as server-sent events, at most every
            ``config.events_interval_s`` seconds.
        ``POST /api/predict``: the faces of one uploaded image (multipart field
            ``image``, or the raw bytes with an ``image/*`` content type).
        Errors under ``/api/`` are JSON ``{"error": "..."}`` with a 4xx status;
        viewers beyond ``config.max_clients`` get 503.
    """
    config = config or Config()
    camera = camera or build_camera(config)
    classifier = getattr(camera.pipeline, "classifier", None)
    model_name = getattr(getattr(classifier, "model", None), "name", "unknown")
    # Uploads get their own detector (OpenCV cascades are not shared across
    # threads) searching larger images at a higher resolution than video frames.
    image_pipeline = build_pipeline(config, classifier, for_images=True) if classifier else None
    image_lock = threading.Lock()

    app = Flask(__name__)
    app.json.sort_keys = False  # probabilities stay in the model's class order
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.extensions["camera"] = camera

    def new_events_renderer():
        return events_renderer(camera, model_name, config.events_interval_s)

    app.extensions["events_renderer"] = new_events_renderer  # for server.py's /api/events

    @app.errorhandler(HTTPException)
    def http_error(e):
        if request.path.startswith("/api/"):
            message = "upload larger than the limit of {:,} bytes".format(config.max_upload_bytes) \
                if e.code == 413 else e.description
            return jsonify(error=message), e.code
        return e

    @app.errorhandler(ImageError)
    def image_error(e):
        return jsonify(error=str(e)), e.status

    @app.get("/")
    def index():
        return render_template("index.html", source=camera.name, notice=camera.notice,
                               labels=list(classifier.labels) if classifier else [])

    def each_frame(render):
        """``render(frame)`` for each new frame, empty results left out.

        Closing this generator (the WSGI server does when the client goes)
        closes the camera's, which unregisters the client at once.
        """
        frames = camera.frames()
        try:
            for frame in frames:
                out = render(frame)
                if out:
                    yield out
        finally:
            frames.close()

    def too_many_viewers():
        if camera.clients < config.max_clients:
            return None
        return jsonify(error=viewer_limit_message(config.max_clients)), 503, {"Retry-After": "10"}

    @app.get("/healthz")
    def healthz():
        age = camera.seconds_since_frame()
        stalled = camera.state == "error" or (
            camera.state in ("streaming", "reconnecting") and age is not None
            and age > config.health_max_frame_age_s)
        body = {"state": camera.state, "source": camera.name, "frames_processed": camera.frames_processed,
                "clients": camera.clients,
                "seconds_since_last_frame": None if age is None else round(age, 2),
                "error": camera.error}
        return jsonify(body), 503 if stalled else 200

    @app.get("/video_feed")
    def video_feed():
        if (refusal := too_many_viewers()):
            return refusal
        # direct_passthrough: the server iterates our generator itself (the parts are bytes)
        return Response(each_frame(lambda frame: frame.part), mimetype=VIDEO_FEED_TYPE,
                        headers=STREAM_HEADERS, direct_passthrough=True)

    @app.get("/api/faces")
    def faces():
        return jsonify(live_payload(camera, camera.latest(), model_name))

    @app.get("/api/events")
    def events():
        if (refusal := too_many_viewers()):
            return refusal

        def stream():
            yield EVENTS_PREAMBLE
            yield from each_frame(new_events_renderer())

        return Response(stream(), mimetype=EVENTS_TYPE, headers=STREAM_HEADERS)

    @app.post("/api/predict")
    def predict():
        if image_pipeline is None:
            return jsonify(error="this server has no classifier"), 503
        if request.files:
            upload = request.files.get("image")
            if upload is None:
                raise ImageError(f"send the image in the multipart field 'image' "
                                 f"(got {', '.join(sorted(request.files))})")
            data = upload.read()
        elif request.mimetype.startswith("image/") or request.mimetype == "application/octet-stream":
            data = request.get_data()
        else:
            raise ImageError("send an image as multipart field 'image' or as the request body "
                             "with an image/* content type", status=415)
        image = decode_image(data, config.max_image_pixels)
        with image_lock:
            found = image_pipeline.analyse_image(image)
        return jsonify(faces_payload(found, image.shape[1], image.shape[0], model_name))

    return app
