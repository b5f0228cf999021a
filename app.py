"""The Flask application: the page, the health check and the JSON API.

The two live streams, ``/video_feed`` and ``/api/events``, are served by
``server.py`` from uvicorn's event loop, in front of this app.
"""
import threading

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from builders import build_camera, build_pipeline
from config import Config
from guards import too_large_message
from images import ImageError, decode_image
from payloads import faces_payload, live_payload, model_name


def create_app(config=None, camera=None):
    """Application factory.

    Args:
        config: a ``config.Config``; defaults to ``Config()``.
        camera: an existing ``camera.Camera``; built from ``config`` if None.

    Routes:
        ``GET /``: the page: live stream, faces and their probabilities, upload, browser camera.
        ``GET /healthz``: source state, frames processed, clients, seconds since
            the last frame; 503 when streaming has stalled or failed.
        ``GET /api/faces``: the faces of the latest frame.
        ``POST /api/predict``: the faces of one uploaded image (multipart field
            ``image``, or the raw bytes with an ``image/*`` content type).
        Errors under ``/api/`` are JSON ``{"error": "..."}`` with a 4xx status.
        ``/video_feed`` and ``/api/events`` are ``server.LiveStreams``'.
    """
    config = config or Config()
    camera = camera or build_camera(config)
    classifier = getattr(camera.pipeline, "classifier", None)
    model = model_name(classifier)
    # Uploads get their own detector (OpenCV cascades are not shared across
    # threads) searching larger images at a higher resolution than video frames.
    image_pipeline = build_pipeline(config, classifier, for_images=True) if classifier else None
    image_lock = threading.Lock()

    app = Flask(__name__)
    app.json.sort_keys = False  # probabilities stay in the model's class order
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.extensions["camera"] = camera

    @app.errorhandler(HTTPException)
    def http_error(e):
        if request.path.startswith("/api/"):
            message = too_large_message(config.max_upload_bytes) if e.code == 413 else e.description
            return jsonify(error=message), e.code
        return e

    @app.errorhandler(ImageError)
    def image_error(e):
        return jsonify(error=str(e)), e.status

    @app.get("/")
    def index():
        return render_template("index.html", source=camera.name, notice=camera.notice,
                               labels=list(classifier.labels) if classifier else [])

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

    @app.get("/api/faces")
    def faces():
        return jsonify(live_payload(camera, camera.latest(), model))

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
        return jsonify(faces_payload(found, image.shape[1], image.shape[0], model))

    return app
