"""The library front door: ``analyze(image)`` and ``Recognizer`` for photos and videos.

    import fer_server
    result = fer_server.analyze("photo.jpg")
    # {"faces": [{"id": None, "box": [x, y, w, h], "label": "Happy", "confidence": 0.93,
    #             "probabilities": {"Angry": 0.01, ...}}], "width": 640, "height": 480,
    #  "model": "fer_ensemble"}

The answer is the JSON-ready dict ``POST /api/predict`` returns, computed by
the same code (the photo settings of ``config.Config``: the padded and
enlarged Haar search, ``image_*``).
"""
import threading
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from fer_server.config import Config


class FerError(ValueError):
    """Bad input to the front door: a missing file, data that is not an image or video, a wrong array."""


class Recognizer:
    """A loaded model with the server's photo and video pipelines.

    Args:
        model: a Keras JSON architecture (default: the shipped ``model.json``),
            or a whole saved model (``.h5``, ``.keras``) with ``weights=None``.
        weights: its weights in the classic HDF5 layout (default: the shipped
            ``model_weights.h5``).
        backend: ``"tflite-int8"`` (default), ``"tflite"`` or ``"tf.function"``.
        config: a ``config.Config`` for every other setting (detector,
            margins, smoothing); ``model``, ``weights`` and ``backend`` override it.

    Raises:
        fer_server.model.files.ModelLoadError: the model files cannot be loaded
            (one sentence naming the file).
    """

    def __init__(self, model=None, weights=None, backend=None, config=None):
        from fer_server.builders import build_classifier, build_pipeline
        from fer_server.model.classifier import quiet_tensorflow

        config = config or Config()
        if model is not None:
            config = replace(config, model_path=Path(model), weights_path=Path(weights) if weights else None)
        elif weights is not None:
            config = replace(config, weights_path=Path(weights))
        if backend is not None:
            config = replace(config, backend=backend)
        self.config = config
        with quiet_tensorflow():
            self.classifier = build_classifier(config)
        self._image_pipeline = build_pipeline(config, self.classifier, for_images=True)
        self._lock = threading.Lock()

    @property
    def labels(self):
        """The class names, in the model's output order (the 7 FER2013 classes for the shipped model)."""
        return list(self.classifier.labels)

    def analyze(self, image):
        """Find and classify every face in one image.

        Args:
            image: a file path (``str`` or ``Path``), the file's bytes (JPEG,
                PNG, BMP, WebP, GIF, TIFF), or a NumPy array: ``(H, W, 3)``
                BGR or ``(H, W)`` grayscale, uint8 (``(H, W, 4)`` BGRA and
                float images in [0, 1] are accepted too).

        Returns:
            ``{"faces": [{"id": None, "box": [x, y, w, h] (ints, pixels),
            "label": str, "confidence": float in [0, 1], "probabilities":
            {class: float}}], "width": int, "height": int, "model": str}``.

        Raises:
            FerError: a missing or unreadable file, bytes that are not an
                image, or an array of another shape or type.
        """
        from fer_server.web.payloads import faces_payload, model_name

        frame = _to_array(image, self.config.max_image_pixels)
        with self._lock:
            faces = self._image_pipeline.faces_in_image(frame)
        return faces_payload(faces, frame.shape[1], frame.shape[0], model_name(self.classifier))

    def analyze_video(self, path):
        """Classify the faces of every frame of a video file, faces tracked with ids.

        Uses the video settings (``detect_every``, tracking, ``smoothing``)
        as ``python main.py --source VIDEO --csv`` does, and yields one dict
        per decoded frame, lazily.

        Args:
            path: a video file OpenCV decodes.

        Yields:
            ``{"frame": int (from 0), "time_s": float (seconds, by the
            container's frame rate), "faces": [{"id": int, "box": [x, y, w,
            h], "label", "confidence", "probabilities"}]}``: the offline
            CSV's fields.

        Raises:
            FerError: the file is missing or cannot be decoded.
        """
        from fer_server.builders import build_pipeline
        from fer_server.capture.sources import SourceError, check_video_file, file_fps

        try:
            check_video_file(path)
        except SourceError as e:
            raise FerError(str(e)) from None
        pipeline = build_pipeline(self.config, self.classifier)
        cap = cv2.VideoCapture(str(path))
        fps = file_fps(cap)
        try:
            index = 0
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                with self._lock:
                    faces = pipeline.find_faces(frame)
                yield {"frame": index, "time_s": round(index / fps, 3), "faces": [f.to_json() for f in faces]}
                index += 1
        finally:
            cap.release()


def _to_array(image, max_pixels):
    from fer_server.vision.frames import to_uint8_image
    from fer_server.web.uploads import ImageError, decode_image

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FerError(f"image file {path} does not exist")
        try:
            image = path.read_bytes()
        except OSError as e:
            raise FerError(f"cannot read the image file {path} ({e.strerror or e})") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            return decode_image(bytes(image), max_pixels)
        except ImageError as e:
            raise FerError(str(e)) from None
    if isinstance(image, np.ndarray):
        try:
            return to_uint8_image(image)
        except ValueError as e:
            raise FerError(str(e)) from None
    raise FerError(f"expected a file path, image bytes or a NumPy array, got {type(image).__name__}")


_default = {}
_default_lock = threading.Lock()


def analyze(image):
    """Find and classify every face in one image with the shipped model.

    The first call loads the model (about a second with TensorFlow already
    imported); later calls reuse it.  See ``Recognizer.analyze`` for the
    argument, the returned dict and the errors (``FerError``).
    """
    with _default_lock:
        if "recognizer" not in _default:
            _default["recognizer"] = Recognizer()
    return _default["recognizer"].analyze(image)
