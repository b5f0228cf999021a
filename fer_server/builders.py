"""Assemble the classifier, the frame pipeline and the camera from a ``config.Config``.

Shared by the server (``web.app.py``), offline analysis (``offline.video.py`` through
``main.py``) and the benchmarks; nothing here imports Flask.
"""
import cv2

from fer_server.capture.camera import Camera
from fer_server.capture.camera_set import Cameras, parse_source_specs
from fer_server.config import source_specs
from fer_server.capture.sources import resolve_source
from fer_server.model.classifier import Classifier
from fer_server.vision.background import BackgroundClassifier
from fer_server.vision.detector import FaceDetector
from fer_server.vision.pipeline import FramePipeline


def build_classifier(config, threads=2):
    """The configured model (``model_path``, ``weights_path``, ``input_range``, ``class_names``) on ``backend``.

    Args:
        threads: TensorFlow Lite interpreter threads.

    Raises:
        model_files.ModelLoadError: the model files cannot be loaded.
    """
    return Classifier.from_files(config.model_path, config.weights_path, input_range=config.input_range,
                                 class_names=config.class_names, backend=config.backend, threads=threads)


def build_pipeline(config, classifier=None, for_images=False, background=None):
    """Load the model (unless given) and assemble the configured ``FramePipeline``.

    ``for_images`` uses the settings for uploaded photos (``image_*``) instead
    of those for video frames.

    Raises:
        model_files.ModelLoadError: the model files cannot be loaded.
    """
    classifier = classifier or build_classifier(config)
    detector = FaceDetector(config.image_scale_factor if for_images else config.scale_factor,
                            config.min_neighbors,
                            config.image_min_face_px if for_images else config.min_face_px,
                            config.image_detect_width if for_images else config.detect_width)
    return FramePipeline(detector, classifier, config.crop_margin, config.detect_every,
                         config.smoothing, config.image_pad if for_images else 0.0,
                         config.image_min_side_px if for_images else 0,
                         still_threshold=config.still_threshold, cut_threshold=config.cut_threshold,
                         spread=config.spread_search,
                         classify_every=1 if for_images else config.classify_every,
                         background=None if for_images else background)


def build_camera(config, source=None, classifier=None, background=None):
    """``build_pipeline``, then open the configured source (or ``source``) as a ``Camera``.

    Args:
        config: a ``config.Config``.
        source: one source string (default: the first of ``config.source``, its name dropped).
        classifier: a ``model.classifier.Classifier`` to share (default: load one).
        background: a ``vision.background.BackgroundClassifier`` to share (default: none).

    Raises:
        model_files.ModelLoadError: the model files cannot be loaded.
        sources.SourceError: a file source is missing or undecodable.
        cameras.SourceNameError: a bad ``NAME=`` in ``config.source``.
    """
    if source is None:
        source = parse_source_specs(source_specs(config))[0][1]
    pipeline = build_pipeline(config, classifier, background=background)
    source, notice = resolve_source(source, config.demo_clip)
    return Camera(source, pipeline, loop=config.loop, idle_timeout_s=config.idle_timeout_s,
                  jpeg_quality=config.jpeg_quality, notice=notice)


def build_background(config, classifier):
    """The ``vision.background.BackgroundClassifier`` of live sources with ``config.classify_in_background``
    (on a one-thread copy of ``classifier``), else None."""
    if not config.classify_in_background:
        return None
    return BackgroundClassifier(classifier.copy(threads=1))


def search_threads(config, sources):
    """The ``cv2.setNumThreads`` value for a server of ``sources`` sources (``Config.search_threads``);
    None leaves OpenCV's own setting (one thread per core)."""
    if config.search_threads > 0:
        return config.search_threads
    return 1 if sources > 1 else None


def build_cameras(config, first=None):
    """One ``Camera`` per ``config.source`` value, sharing one classifier, as ``capture.camera_set.Cameras``.

    Each camera has its own pipeline (tracker, cascade) and capture thread;
    the classifier serialises inference under its lock.  With
    ``config.classify_in_background`` the faces the cameras follow are
    classified by one ``vision.background.BackgroundClassifier`` on a copy
    of the classifier with one interpreter thread.  With
    ``config.record`` each camera gets a ``capture.recording.Recorder`` as a frame
    observer.  OpenCV's threads are set for the whole process by
    ``search_threads``.

    Args:
        config: a ``config.Config``.
        first: an existing ``Camera`` to serve as the first source instead
            of opening it (tests, ``web.app.create_app(config, camera)``).

    Raises:
        model_files.ModelLoadError, sources.SourceError, cameras.SourceNameError:
            as ``build_camera``.
        OSError: the record folder cannot be written.
    """
    pairs = parse_source_specs(source_specs(config))
    threads = search_threads(config, len(pairs))
    if threads is not None:
        cv2.setNumThreads(threads)
    cameras = {}
    classifier = getattr(getattr(first, "pipeline", None), "classifier", None)
    background = None
    for i, (name, source) in enumerate(pairs):
        if i == 0 and first is not None:
            cameras[name] = first
            continue
        if classifier is None:
            classifier = build_classifier(config)
        background = background or build_background(config, classifier)
        cameras[name] = build_camera(config, source, classifier, background)
    recorders = {}
    if config.record is not None:
        from fer_server.capture.recording import Recorder

        for name, camera in cameras.items():
            labels = getattr(getattr(camera.pipeline, "classifier", None), "labels", None)
            recorders[name] = Recorder(config.record, name, labels)
            camera.add_frame_observer(recorders[name].observe_frame)
    return Cameras(cameras, recorders, background)
