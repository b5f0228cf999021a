"""Assemble the classifier, the frame pipeline and the camera from a ``config.Config``.

Shared by the server (``app.py``), offline analysis (``analyse.py`` through
``main.py``) and the benchmarks; nothing here imports Flask.
"""
from camera import Camera
from sources import resolve_source
from classifier import Classifier
from pipeline import FaceDetector, FramePipeline


def build_pipeline(config, classifier=None, for_images=False):
    """Load the model (unless given) and assemble the configured ``FramePipeline``.

    ``for_images`` uses the settings for uploaded photos (``image_*``) instead
    of those for video frames.

    Raises:
        classifier.ModelLoadError: the model files cannot be loaded.
    """
    classifier = classifier or Classifier.from_files(config.model_path, config.weights_path,
                                                     input_range=config.input_range,
                                                     class_names=config.class_names, backend=config.backend)
    detector = FaceDetector(config.image_scale_factor if for_images else config.scale_factor,
                            config.min_neighbors,
                            config.image_min_face_px if for_images else config.min_face_px,
                            config.image_detect_width if for_images else config.detect_width)
    return FramePipeline(detector, classifier, config.crop_margin, config.detect_every,
                         config.smoothing, config.image_pad if for_images else 0.0)


def build_camera(config):
    """``build_pipeline``, then open the configured source as a ``Camera``.

    Raises:
        classifier.ModelLoadError: the model files cannot be loaded.
        sources.SourceError: a file source is missing or undecodable.
    """
    pipeline = build_pipeline(config)
    source, notice = resolve_source(config.source, config.demo_clip)
    return Camera(source, pipeline, loop=config.loop, idle_timeout_s=config.idle_timeout_s,
                  jpeg_quality=config.jpeg_quality, notice=notice)
