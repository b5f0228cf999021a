"""The Flask application: the page, the health check and the JSON API.

The two live streams, ``/video_feed`` and ``/api/events``, are served by
``web.server.py`` from uvicorn's event loop, in front of this app.
"""
import threading

from flask import Flask, abort, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from fer_server.builders import build_cameras, build_pipeline
from fer_server.capture.camera_set import Cameras, UnknownSourceError
from fer_server.config import ROOT, Config
from fer_server.model.litert import FULL_INSTALL
from fer_server.web.guards import too_large_message
from fer_server.web.uploads import ImageError, decode_image
from fer_server.web.payloads import faces_payload, live_payload, model_name, with_explanations


def create_app(config=None, camera=None):
    """Application factory.

    Args:
        config: a ``config.Config``; defaults to ``Config()``.
        camera: an existing ``capture.camera.Camera`` serving the first source (the
            other ``config.source`` values, and if None the first, are opened
            here by ``builders.build_cameras``), or a whole ``capture.camera_set.Cameras``.

    Routes (``source=<name>`` picks a source; without it, the first; an
    unknown name gets 404 JSON):
        ``GET /``: the page: every source in a grid, faces and their
            probabilities, a timeline, explanations, upload, browser camera.
        ``GET /healthz``: the first source's state, frames processed,
            clients, seconds since the last frame, and the same for every
            source under ``sources``; 503 only when every source has
            stalled or failed.
        ``GET /api/faces?source=``: the faces of the latest frame.
        ``?explain=1`` on ``/api/faces`` and ``/api/predict`` adds to each face an
            ``explanation``: ``{"class": label, "heatmap": "data:image/png;base64,..."}``,
            its Grad-CAM map (``model.gradcam.GradCam``) over the classifier's crop;
            501 JSON in the serve-only install (no TensorFlow), whose page
            hides the toggle.
        ``GET /api/history?source=&seconds=60``: the recorded rows of the
            last ``seconds`` (at most ``capture.recording.HISTORY_S``), with
            ``--record`` only (404 JSON otherwise).
        ``POST /api/predict``: the faces of one uploaded image (multipart field
            ``image``, or the raw bytes with an ``image/*`` content type).
        Errors under ``/api/`` are JSON ``{"error": "..."}`` with a 4xx status.
        ``/video_feed`` and ``/api/events`` are ``web.server.LiveStreams``'.
    """
    config = config or Config()
    cameras = camera if isinstance(camera, Cameras) else build_cameras(config, first=camera)
    camera = cameras.first
    classifier = getattr(camera.pipeline, "classifier", None)
    model = model_name(classifier)
    # Uploads get their own detector (OpenCV cascades are not shared across
    # threads) searching larger images at a higher resolution than video frames.
    image_pipeline = build_pipeline(config, classifier, for_images=True) if classifier else None
    image_lock = threading.Lock()
    explainers = []  # the GradCam, made at the first request that asks (it traces a graph)
    explainer_lock = threading.Lock()

    can_explain = getattr(classifier, "can_explain", classifier is not None)

    def explained(payload, faces):
        if request.args.get("explain", "").lower() not in ("1", "true", "yes", "on") or classifier is None:
            return payload
        if not can_explain:
            abort(501, description=f"Grad-CAM explanations need TensorFlow, which this serve-only install leaves "
                                   f"out: {FULL_INSTALL}")
        with explainer_lock:
            if not explainers:
                from fer_server.model.gradcam import GradCam

                explainers.append(GradCam(classifier))
        return with_explanations(payload, explainers[0].explain(faces))

    app = Flask(__name__, template_folder=str(ROOT / "templates"))
    app.json.sort_keys = False  # probabilities stay in the model's class order
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.extensions["camera"] = camera
    app.extensions["cameras"] = cameras

    @app.errorhandler(HTTPException)
    def http_error(e):
        if request.path.startswith("/api/"):
            message = too_large_message(config.max_upload_bytes) if e.code == 413 else e.description
            return jsonify(error=message), e.code
        return e

    @app.errorhandler(UnknownSourceError)
    def unknown_source(e):
        return jsonify(error=str(e)), 404

    @app.errorhandler(ImageError)
    def image_error(e):
        return jsonify(error=str(e)), e.status

    @app.get("/")
    def index():
        return render_template("index.html", source=camera.name, notice=camera.notice,
                               sources=[{"name": name, "label": c.name} for name, c in cameras],
                               labels=list(classifier.labels) if classifier else [], explain=can_explain)

    def health(one, recorder):
        age = one.seconds_since_frame()
        stalled = one.state == "error" or (
            one.state in ("streaming", "reconnecting") and age is not None
            and age > config.health_max_frame_age_s)
        return stalled, {"state": one.state, "source": one.name, "frames_processed": one.frames_processed,
                         "clients": one.clients, "stalled": stalled,
                         "seconds_since_last_frame": None if age is None else round(age, 2),
                         "error": one.error,
                         "recording": None if recorder is None else {
                             "rows_written": recorder.rows_written, "write_errors": recorder.write_errors,
                             "last_error": recorder.last_error}}

    @app.get("/healthz")
    def healthz():
        states = {name: health(one, cameras.recorders.get(name)) for name, one in cameras}
        body = dict(next(iter(states.values()))[1])  # the first source's, as before several sources
        body["sources"] = {name: state for name, (_, state) in states.items()}
        return jsonify(body), 503 if all(stalled for stalled, _ in states.values()) else 200

    @app.get("/api/faces")
    def faces():
        one = cameras.get(request.args.get("source"))
        frame = one.latest()
        payload = live_payload(one, frame, model, cameras.name_of(one))
        return jsonify(explained(payload, frame.faces if frame else []))

    @app.get("/api/history")
    def history():
        name = request.args.get("source") or cameras.names[0]
        cameras.get(name)  # 404 for an unknown name
        recorder = cameras.recorders.get(name)
        if recorder is None:
            return jsonify(error="this server is not recording; start it with --record DIR"), 404
        try:
            seconds = float(request.args.get("seconds", 60))
        except ValueError:
            return jsonify(error="seconds must be a number"), 400
        return jsonify(source=name, columns=list(recorder.columns), rows=recorder.recent(seconds))

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
            found = image_pipeline.faces_in_image(image)
        return jsonify(explained(faces_payload(found, image.shape[1], image.shape[0], model), found))

    return app
