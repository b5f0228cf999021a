"""The Flask application: the page, the MJPEG stream and the faces as JSON."""
from flask import Flask, Response, jsonify, render_template

from camera import BOUNDARY, Camera, resolve_source
from classifier import Classifier
from config import Config
from pipeline import FaceDetector, FramePipeline


def build_pipeline(config):
    """Load the model and assemble the configured ``FramePipeline``.

    Raises:
        classifier.ModelLoadError: the model files cannot be loaded.
    """
    classifier = Classifier.from_files(config.model_path, config.weights_path)
    detector = FaceDetector(config.scale_factor, config.min_neighbors, config.min_face_px,
                            config.detect_width)
    return FramePipeline(detector, classifier, config.crop_margin, config.detect_every,
                         config.smoothing)


def build_camera(config):
    """``build_pipeline``, then open the configured source as a ``Camera``.

    Raises:
        classifier.ModelLoadError: the model files cannot be loaded.
        camera.SourceError: a file source is missing or undecodable.
    """
    pipeline = build_pipeline(config)
    source, notice = resolve_source(config.source, config.demo_clip)
    return Camera(source, pipeline, loop=config.loop, idle_timeout_s=config.idle_timeout_s,
                  jpeg_quality=config.jpeg_quality, notice=notice)


def create_app(config=None, camera=None):
    """Application factory.

    Args:
        config: a ``config.Config``; defaults to ``Config()``.
        camera: an existing ``camera.Camera``; built from ``config`` if None.

    Routes:
        ``GET /``: the page with the live stream and the current faces.
        ``GET /video_feed``: MJPEG, ``multipart/x-mixed-replace; boundary=frame``.
        ``GET /api/faces``: the faces of the latest frame as JSON.
    """
    config = config or Config()
    camera = camera or build_camera(config)
    model_name = getattr(camera.pipeline, "classifier", None)
    model_name = getattr(getattr(model_name, "model", None), "name", "unknown")
    app = Flask(__name__)
    app.extensions["camera"] = camera

    @app.get("/")
    def index():
        return render_template("index.html", source=camera.name, notice=camera.notice)

    @app.get("/video_feed")
    def video_feed():
        parts = (frame.part for frame in camera.frames())
        return Response(parts, mimetype=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                        headers={"Cache-Control": "no-store"})

    @app.get("/api/faces")
    def faces():
        frame = camera.latest()
        return jsonify({
            "faces": [face.to_json() for face in frame.faces] if frame else [],
            "width": frame.width if frame else None,
            "height": frame.height if frame else None,
            "model": model_name,
            "source": camera.name,
            "notice": camera.notice,
            "error": camera.error,
            "frame": frame.seq if frame else None,
        })

    return app
