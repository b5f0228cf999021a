"""The per-frame work: find faces, classify them, draw labelled boxes.

Nothing here opens a camera or a server: ``FramePipeline.process`` takes a
BGR frame and returns the annotated frame and the faces, so it is tested on
plain arrays.
"""
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from tracker import FaceTracker

CASCADE_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Face:
    """One classified face.

    Attributes:
        box: ``(x, y, w, h)`` bounding box in pixels of the frame.
        id: the tracker's id, stable while the face is followed (None
            for a face in a single image).
        label: the most probable class name.
        confidence: its probability, in [0, 1].
        probabilities: ``{class name: probability}`` over every class.
        crop: the classifier's input for this face, ``(H, W, C)`` float32
            in [0, 1] (a view of the frame's batch, kept for
            ``explain.GradCam``; None when not made by a ``FramePipeline``).
    """

    box: tuple
    label: str
    confidence: float
    probabilities: dict = field(default_factory=dict)
    id: int = None
    crop: object = field(default=None, compare=False, repr=False)

    def to_json(self):
        """The face as JSON-ready data: ``box`` a list of 4 ints, floats rounded to 4 places."""
        return {"id": self.id, "box": [int(v) for v in self.box], "label": self.label,
                "confidence": round(float(self.confidence), 4),
                "probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()}}


class FaceDetector:
    """OpenCV's Viola-Jones Haar cascade (``haarcascade_frontalface_default.xml``).

    Frames wider than ``detect_width`` are searched at that width and the
    boxes scaled back: the cascade's cost grows with the pixel count, and a
    face of ``min_face_px`` still spans at least the cascade's 24-pixel
    window as long as the scale stays above ``24 / min_face_px``.

    Args:
        scale_factor, min_neighbors: ``detectMultiScale`` settings.
        min_face_px: smallest face side searched for, in pixels of the full frame.
        detect_width: width in pixels the frame is downscaled to before
            searching (``None``: search at full resolution).
    """

    WINDOW_PX = 24  # the cascade's training window
    ENLARGE_MAX_RATIO = 4  # detect_padded: an enlarged image's longer side is at most 4 x min_side_px

    def __init__(self, scale_factor=1.1, min_neighbors=5, min_face_px=40, detect_width=None):
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV could not load {cv2.data.haarcascades + CASCADE_FILE}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_px = min_face_px
        self.detect_width = detect_width

    def detect(self, gray, min_px=None, max_px=None, scale=None, min_neighbors=None):
        """Find faces in a ``(H, W)`` uint8 grayscale frame or part of one.

        Args:
            gray: the image to search.
            min_px, max_px: face sides searched, in pixels of ``gray``
                (default: ``min_face_px`` up to the whole image).  A narrow
                range is what makes a search around a tracked face cheap.
            scale: downscale factor applied before searching (default: down
                to ``detect_width``).
            min_neighbors: overrides the detector's setting for this search.

        Returns:
            ``(N, 4)`` int32 array of ``(x, y, w, h)`` boxes in pixels of ``gray``.
        """
        if scale is None:
            scale = 1.0
            if self.detect_width and gray.shape[1] > self.detect_width:
                scale = self.detect_width / gray.shape[1]
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                              interpolation=cv2.INTER_AREA)
        else:
            scale = 1.0
        min_side = max(self.WINDOW_PX, round((min_px or self.min_face_px) * scale))
        max_side = round(max_px * scale) if max_px else 0
        if max_side and max_side < min_side or min(gray.shape[:2]) < min_side:
            return np.zeros((0, 4), np.int32)
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=min_neighbors or self.min_neighbors,
            minSize=(min_side, min_side), maxSize=(max_side, max_side))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return np.round(boxes / scale).astype(np.int32)

    def detect_padded(self, gray, pad, min_side_px=0):
        """``detect`` on ``gray`` widened by a replicated border, boxes mapped back.

        The cascade only fires where its whole window, face plus a little
        forehead and chin, lies inside the image, so a face that touches the
        border or fills the frame (the usual uploaded crop) is missed.
        Replicating the edge pixels outwards gives the window room.  A small
        image (a 48x48 face crop) is also missed more often at its own size
        than enlarged: ``min_side_px`` enlarges it for the search.

        Args:
            gray: ``(H, W)`` uint8 grayscale image.
            pad: border width on every side as a fraction of ``min(H, W)``
                (no face is taller or wider than the shorter side); 0 is a
                plain ``detect``.
            min_side_px: an image whose shorter side is below this many
                pixels is enlarged (bicubic) so that side reaches it before
                the search, but never so far that its longer side passes
                ``ENLARGE_MAX_RATIO * min_side_px`` (a 1x4000 strip stays
                as it is); 0 never enlarges.

        Returns:
            ``(N, 4)`` int32 ``(x, y, w, h)`` boxes in pixels of ``gray``,
            not clipped: a box may reach past the image's edges (see
            ``clip_boxes``).  Boxes whose centre lies outside ``gray``
            (found in the border alone) are dropped.  The search is
            downscaled as ``detect`` would downscale ``gray`` itself, so the
            smallest face found is unchanged; it costs at most ``(1 + 2 pad)^2``
            times the pixels of the (enlarged) image, whatever its shape.

        Raises:
            ValueError: ``pad`` or ``min_side_px`` is negative.
        """
        if pad < 0 or min_side_px < 0:
            raise ValueError(f"pad and min_side_px must be >= 0, got {pad} and {min_side_px}")
        height, width = gray.shape[:2]
        enlarge = max(1.0, min(min_side_px / min(height, width),
                               self.ENLARGE_MAX_RATIO * min_side_px / max(height, width)))
        if enlarge > 1.0:
            gray = cv2.resize(gray, (round(width * enlarge), round(height * enlarge)), interpolation=cv2.INTER_CUBIC)
        border = int(round(pad * min(gray.shape[:2])))
        # downscale as for the unpadded image: the border must not raise the smallest face found
        scale = min(1.0, self.detect_width / gray.shape[1]) if self.detect_width else 1.0
        padded = cv2.copyMakeBorder(gray, border, border, border, border, cv2.BORDER_REPLICATE) if border else gray
        boxes = self.detect(padded, scale=scale).astype(np.float64)
        boxes[:, :2] -= border
        boxes = np.round(boxes / enlarge).astype(np.int32)
        centre = boxes[:, :2] + boxes[:, 2:] / 2
        inside = ((centre >= 0) & (centre < np.array([width, height]))).all(1)
        return boxes[inside]


def clip_boxes(boxes, shape):
    """Clip ``(N, 4)`` ``(x, y, w, h)`` boxes to an image of ``shape`` ``(H, W, ...)``.

    Returns:
        ``(N, 4)`` int32 boxes inside ``[0, W) x [0, H)``; a box wholly outside
        gets zero width or height.
    """
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    height, width = shape[:2]
    x0, y0 = boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height)
    x1 = (boxes[:, 0] + boxes[:, 2]).clip(0, width)
    y1 = (boxes[:, 1] + boxes[:, 3]).clip(0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1).astype(np.int32)


def crop_faces(image, boxes, size=48, margin=0.0):
    """Cut each box out of the frame as a classifier input.

    Args:
        image: ``(H, W)`` uint8 grayscale frame, or ``(H, W, C)`` uint8
            colour frame (channels kept in their order).
        boxes: ``(N, 4)`` ``(x, y, w, h)`` boxes in pixels.
        size: output side in pixels, or ``(height, width)``.
        margin: fraction of the box side added on every side; the part of a
            widened box outside the frame is filled by replicating the edge.

    Returns:
        ``(N, height, width, 1)`` (grayscale) or ``(N, height, width, C)``
        float32 in [0, 1].
    """
    out_h, out_w = (size, size) if np.isscalar(size) else size
    channels = 1 if image.ndim == 2 else image.shape[2]
    out = np.empty((len(boxes), out_h, out_w, channels), np.float32)
    height, width = image.shape[:2]
    for i, (x, y, w, h) in enumerate(boxes):
        dx, dy = int(round(w * margin)), int(round(h * margin))
        x0, y0, x1, y1 = x - dx, y - dy, x + w + dx, y + h + dy
        crop = image[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
        if (x0, y0, x1, y1) != (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)):
            crop = cv2.copyMakeBorder(crop, max(-y0, 0), max(y1 - height, 0), max(-x0, 0),
                                      max(x1 - width, 0), cv2.BORDER_REPLICATE)
        interpolation = cv2.INTER_AREA if crop.shape[0] > out_h else cv2.INTER_LINEAR
        resized = cv2.resize(crop, (out_w, out_h), interpolation=interpolation)
        if channels == 1:
            out[i, :, :, 0] = resized
        else:
            out[i] = resized
    out *= 1.0 / 255.0
    return out


#: BGR box colour per class name; other labels are drawn in white.
COLOURS = {"Angry": (40, 40, 230), "Disgust": (40, 140, 40), "Fear": (160, 60, 160),
           "Happy": (40, 200, 250), "Sad": (200, 120, 40), "Surprise": (230, 200, 40),
           "Neutral": (200, 200, 200)}


def draw_faces(frame, faces):
    """Draw each face's box and ``"<label> <confidence>%"`` onto ``frame`` in place (BGR uint8)."""
    thickness = max(1, round(frame.shape[1] / 400))
    for face in faces:
        x, y, w, h = (int(v) for v in face.box)
        colour = COLOURS.get(face.label, (255, 255, 255))
        cv2.rectangle(frame, (x, y), (x + w, y + h), colour, thickness)
        text = f"{face.label} {face.confidence * 100:.0f}%"
        scale = max(0.45, w / 250)
        weight = 1 if scale < 0.8 else 2  # thin strokes keep small labels legible
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
        top = y - th - base - 4 if y - th - base - 4 >= 0 else y + h
        cv2.rectangle(frame, (x, top), (x + tw + 6, top + th + base + 4), colour, cv2.FILLED)
        cv2.putText(frame, text, (x + 3, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), weight, cv2.LINE_AA)
    return frame


def to_uint8_image(frame):
    """Bring any reasonable image array to what the pipeline works on.

    Args:
        frame: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)``
            BGRA; uint8, bool, another integer type (scaled down from its
            full range) or float in [0, 1].

    Returns:
        ``(H, W)`` uint8 grayscale or ``(H, W, 3)`` uint8 BGR.

    Raises:
        ValueError: any other shape, an empty image, or a non-numeric dtype.
    """
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)) or frame.size == 0:
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, "
                         f"got shape {frame.shape}")
    if frame.dtype == np.bool_:
        frame = frame.astype(np.uint8) * 255
    elif np.issubdtype(frame.dtype, np.integer) and frame.dtype != np.uint8:
        info = np.iinfo(frame.dtype)
        frame = ((frame.astype(np.float64) - info.min) * (255.0 / (info.max - info.min))).astype(np.uint8)
    elif np.issubdtype(frame.dtype, np.floating):
        frame = (np.nan_to_num(frame.astype(np.float64), nan=0.0).clip(0.0, 1.0) * 255).round().astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise ValueError(f"expected a numeric image, got dtype {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(frame)


def _grayscale(frame):
    """``to_uint8_image``, then ``(H, W)`` uint8 grayscale."""
    frame = to_uint8_image(frame)
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


class FramePipeline:
    """Detect or track, crop, classify (one batched call per frame) and draw.

    Args:
        detector: a ``FaceDetector``.
        classifier: a ``classifier.Classifier``.
        crop_margin: see ``crop_faces``.
        detect_every: full-frame detection every this many frames, faces
            tracked in between (see ``tracker.FaceTracker``); 1 detects on
            every frame.
        smoothing: weight of the past in the exponential moving average of
            each tracked face's probabilities, in [0, 1); 0 shows each
            frame's raw probabilities.
        image_pad: ``analyse_image`` only (never video frames): border added
            around the image before the face search, as a fraction of its
            shorter side (see ``FaceDetector.detect_padded``); 0 turns it off.
        image_min_side_px: ``analyse_image`` only: an image whose shorter
            side is below this many pixels is enlarged to it for the face
            search (the crops still come from the image itself); 0 never.
    """

    def __init__(self, detector, classifier, crop_margin=0.0, detect_every=1, smoothing=0.0, image_pad=0.0,
                 image_min_side_px=0):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if image_pad < 0:
            raise ValueError(f"image_pad must be >= 0, got {image_pad}")
        if image_min_side_px < 0:
            raise ValueError(f"image_min_side_px must be >= 0, got {image_min_side_px}")
        self.image_pad = image_pad
        self.image_min_side_px = image_min_side_px
        self.detector = detector
        self.classifier = classifier
        self.crop_margin = crop_margin
        self.smoothing = smoothing
        self.tracker = FaceTracker(detector, detect_every)
        self._smoothed = {}  # track id -> (C,) float32 probabilities
        #: ms spent on the last frame per stage: ``detect`` (grayscale, detection or
        #: tracking), ``classify`` (crop, inference, smoothing), ``draw``.
        self.timings = {}

    def reset(self, restart_ids=False):
        """Forget tracks and smoothed probabilities (a new video or a jump in it);
        ``restart_ids``: number the next faces from 1 (see ``FaceTracker.reset``)."""
        self.tracker.reset(restart_ids)
        self._smoothed = {}

    def analyse(self, frame):
        """Find (or follow) and classify the faces of the next video frame.

        Args:
            frame: ``(H, W, 3)`` BGR or ``(H, W)`` grayscale uint8 image
                (other layouts as ``to_uint8_image`` accepts).

        Returns:
            A list of ``Face``, one per tracked face, with its track id.

        Raises:
            ValueError: ``frame`` is not an image.
        """
        started = time.perf_counter()
        gray = _grayscale(frame)
        tracks = self.tracker.update(gray)
        detected = time.perf_counter()
        crops = self._crops(gray, [t.box for t in tracks], frame)
        probs = self._predict(crops)
        smoothed = {}
        for track, p in zip(tracks, probs):
            previous = self._smoothed.get(track.id)
            if self.smoothing and previous is not None:
                p = self.smoothing * previous + (1.0 - self.smoothing) * p
            smoothed[track.id] = p
        self._smoothed = smoothed
        faces = [self._face(t.box, smoothed[t.id], t.id, crop) for t, crop in zip(tracks, crops)]
        self.timings = {"detect": (detected - started) * 1e3,
                        "classify": (time.perf_counter() - detected) * 1e3}
        return faces

    def analyse_image(self, image):
        """Classify every face of a single image: full detection, no tracking or smoothing.

        With ``image_pad`` the search runs on the image widened by a
        replicated border, so a face touching the edge or filling the frame
        is found; the classifier sees the found box (the part outside the
        image replicated from its edge, as in ``crop_faces``) and the
        ``Face.box`` returned is that box clipped to the image.

        Args:
            image: ``(H, W, 3)`` BGR or ``(H, W)`` grayscale uint8 image
                (other layouts as ``to_uint8_image`` accepts).

        Returns:
            A list of ``Face`` (``id`` None), in the detector's order.

        Raises:
            ValueError: ``image`` is not an image.
        """
        image = to_uint8_image(image)
        gray = _grayscale(image)
        boxes = self.detector.detect_padded(gray, self.image_pad, self.image_min_side_px)
        crops = self._crops(gray, boxes, image)
        return [self._face(b, p, None, crop)
                for b, p, crop in zip(clip_boxes(boxes, gray.shape), self._predict(crops), crops)]

    def process(self, frame):
        """``analyse`` then draw: returns ``(annotated BGR copy, faces)``.

        Raises:
            ValueError: ``frame`` is not an image (see ``to_uint8_image``).
        """
        frame = to_uint8_image(frame)
        faces = self.analyse(frame)
        started = time.perf_counter()
        annotated = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
        draw_faces(annotated, faces)
        self.timings["draw"] = (time.perf_counter() - started) * 1e3
        return annotated, faces

    def _crops(self, gray, boxes, frame=None):
        """``(N, H, W, C)`` classifier inputs of the faces in ``boxes``: grayscale crops, or, for a model
        taking 3 channels, RGB crops of a BGR ``frame`` (given as ``analyse`` received it)."""
        height, width, channels = self.classifier.input_shape
        if len(boxes) == 0:
            return np.zeros((0, height, width, 1), np.float32)
        size = height if height == width else (height, width)
        if channels == 3 and frame is not None and frame.ndim == 3:
            return crop_faces(to_uint8_image(frame), np.asarray(boxes), size, self.crop_margin)[..., ::-1]
        return crop_faces(gray, np.asarray(boxes), size, self.crop_margin)

    def _predict(self, crops):
        """``(N, classes)`` probabilities of ``_crops``' output."""
        if len(crops) == 0:
            return np.zeros((0, len(self.classifier.labels)), np.float32)
        return self.classifier.predict(crops)

    def _face(self, box, p, track_id=None, crop=None):
        labels = self.classifier.labels
        best = int(np.argmax(p))
        return Face(tuple(int(v) for v in box), labels[best], float(p[best]),
                    dict(zip(labels, (float(v) for v in p))), track_id, crop)
