"""Every setting of the server in one place, with its default."""
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
#: The classifier's inference paths (``classifier.Classifier``).
BACKENDS = ("tflite", "tflite-int8", "tf.function")


@dataclass(frozen=True)
class Config:
    """Server configuration; ``main.py`` fills it from the command line.

    Attributes:
        source: webcam index (``"0"``), video file path, stream URL that
            OpenCV opens (``rtsp://``, ``http://``), or ``"demo"`` for the
            bundled clip.
        model_path, weights_path: ``model.json`` and ``model_weights.h5``.
        demo_clip: the clip streamed for ``demo`` and when the webcam cannot
            be opened.
        loop: replay a video file from the start when it ends.
        idle_timeout_s: seconds after the last client leaves before the
            capture thread stops and releases the device.
        jpeg_quality: 0-100, for the MJPEG frames.
        scale_factor, min_neighbors, min_face_px: Haar cascade
            ``detectMultiScale`` settings (``min_face_px`` is the smallest
            face side in pixels of the full frame).
        detect_width: frames wider than this many pixels are downscaled to
            it for face detection (``None``: full resolution).
        detect_every: full-frame face detection every this many frames;
            faces are tracked in between.
        smoothing: weight of the past in each tracked face's exponential
            moving average of probabilities; 0 turns smoothing off.
        image_detect_width: like ``detect_width``, for uploaded images.
        image_min_face_px: like ``min_face_px``, for uploaded images (photos
            often hold smaller faces than a webcam frame).
        image_scale_factor: like ``scale_factor``, for uploaded images: a
            finer search, as one photo has no next frame to catch a miss.
        max_upload_bytes: larger request bodies get 413.
        max_image_pixels: images whose header declares more pixels get 413
            before any decoding.
        events_interval_s: least time between two ``/api/events`` messages.
        max_clients: concurrent stream viewers (``/video_feed`` and
            ``/api/events``) served; more get 503.
        request_timeout_s: a connection that has not sent a whole request
            within this many seconds of opening it is closed (slow or
            silent clients would otherwise hold a slot for good).
        health_max_frame_age_s: ``/healthz`` answers 503 when the source is
            meant to stream but no frame came for this many seconds.
        image_pad: for uploaded images only (``/api/predict``), a border of
            replicated edge pixels this fraction of the image's longer side
            wide is added on every side before the face search, so a face
            that touches the border or fills the frame (a cropped face) is
            found; boxes are mapped back and clipped to the image.  0 turns
            it off.  Video frames are never padded.  Chosen on PublicTest
            through the upload path (``python -m train.detector_accuracy
            --pads``): on the bare faces, enlarged to 144 px, 0 finds 57.2%
            (accuracy 38.4%, a miss counting as wrong), 0.2 73.9% (51.3%),
            0.3 75.8% (52.3%), 0.4 and 0.5 no more; on the faces in a grey
            canvas (a whole photo) 0.3 finds 76.0% against 75.0% at 0, with
            accuracy 51.9% against 51.7%.  The search costs about
            ``(1 + 2 image_pad)^2`` times the pixels (1.6x the time of an
            unpadded 350x350 photo at 0.3).
        crop_margin: fraction of the Haar box side added on each side before
            cropping the face for the classifier.
        backend: the classifier's inference path: ``"tflite-int8"`` (the
            default; int8 weights, PublicTest accuracy 0.1 point below
            float32; per face at batch size 1, 0.35 against 1.25 ms on a
            2-core AMD EPYC with AVX-512 VNNI, about 4x faster on the 2-core
            Xeon, 4.75 against 6.03 ms on an AVX2-only EPYC), ``"tflite"``
            (float32, the Keras model's outputs to within 1e-6) or
            ``"tf.function"``; see ``classifier.Classifier``.
    """

    source: str = "0"
    model_path: Path = ROOT / "model.json"
    weights_path: Path = ROOT / "model_weights.h5"
    demo_clip: Path = ROOT / "demo" / "demo.mp4"
    loop: bool = True
    idle_timeout_s: float = 5.0
    jpeg_quality: int = 80
    scale_factor: float = 1.15
    min_neighbors: int = 5
    min_face_px: int = 40
    detect_width: int = 320
    detect_every: int = 10
    smoothing: float = 0.6
    crop_margin: float = 0.0
    image_detect_width: int = 1280
    image_min_face_px: int = 24
    image_scale_factor: float = 1.1
    image_pad: float = 0.3
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    events_interval_s: float = 0.2
    max_clients: int = 64
    request_timeout_s: float = 30.0
    health_max_frame_age_s: float = 10.0
    backend: str = "tflite-int8"
