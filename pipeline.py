"""The per-frame work: find faces, classify them, draw labelled boxes.

Nothing here opens a camera or a server: ``FramePipeline.process`` takes a
BGR frame and returns the annotated frame and the faces, so it is tested on
plain arrays.
"""
from dataclasses import dataclass, field

import cv2
import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Face:
    """One classified face.

    Attributes:
        box: ``(x, y, w, h)`` bounding box in pixels of the frame.
        label: the most probable class name.
        confidence: its probability, in [0, 1].
        probabilities: ``{class name: probability}`` over every class.
    """

    box: tuple
    label: str
    confidence: float
    probabilities: dict = field(default_factory=dict)

    def to_json(self):
        """The face as JSON-ready data: ``box`` a list of 4 ints, floats rounded to 4 places."""
        return {"box": [int(v) for v in self.box], "label": self.label,
                "confidence": round(float(self.confidence), 4),
                "probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()}}


class FaceDetector:
    """OpenCV's Viola-Jones Haar cascade (``haarcascade_frontalface_default.xml``).

    Args:
        scale_factor, min_neighbors: ``detectMultiScale`` settings.
        min_face_px: smallest face side searched for, in pixels.
    """

    def __init__(self, scale_factor=1.1, min_neighbors=5, min_face_px=40):
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV could not load {cv2.data.haarcascades + CASCADE_FILE}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_px = min_face_px

    def detect(self, gray):
        """Find faces in a ``(H, W)`` uint8 grayscale frame.

        Returns:
            ``(N, 4)`` int32 array of ``(x, y, w, h)`` boxes in pixels.
        """
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_face_px, self.min_face_px))
        return np.asarray(boxes, dtype=np.int32).reshape(-1, 4)


def crop_faces(gray, boxes, size=48, margin=0.0):
    """Cut each box out of the frame as a classifier input.

    Args:
        gray: ``(H, W)`` uint8 grayscale frame.
        boxes: ``(N, 4)`` ``(x, y, w, h)`` boxes in pixels.
        size: output side in pixels.
        margin: fraction of the box side added on every side; the part of a
            widened box outside the frame is filled by replicating the edge.

    Returns:
        ``(N, size, size, 1)`` float32 in [0, 1].
    """
    out = np.empty((len(boxes), size, size, 1), np.float32)
    height, width = gray.shape[:2]
    for i, (x, y, w, h) in enumerate(boxes):
        dx, dy = int(round(w * margin)), int(round(h * margin))
        x0, y0, x1, y1 = x - dx, y - dy, x + w + dx, y + h + dy
        crop = gray[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
        if (x0, y0, x1, y1) != (max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)):
            crop = cv2.copyMakeBorder(crop, max(-y0, 0), max(y1 - height, 0), max(-x0, 0),
                                      max(x1 - width, 0), cv2.BORDER_REPLICATE)
        interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
        out[i, :, :, 0] = cv2.resize(crop, (size, size), interpolation=interpolation)
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
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = y - th - base - 4 if y - th - base - 4 >= 0 else y + h
        cv2.rectangle(frame, (x, top), (x + tw + 6, top + th + base + 4), colour, cv2.FILLED)
        cv2.putText(frame, text, (x + 3, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), thickness, cv2.LINE_AA)
    return frame


class FramePipeline:
    """Detect, crop, classify (one batched call per frame) and draw.

    Args:
        detector: a ``FaceDetector``.
        classifier: a ``classifier.Classifier``.
        crop_margin: see ``crop_faces``.
    """

    def __init__(self, detector, classifier, crop_margin=0.0):
        self.detector = detector
        self.classifier = classifier
        self.crop_margin = crop_margin

    def analyse(self, frame):
        """Find and classify the faces of one frame.

        Args:
            frame: ``(H, W, 3)`` BGR or ``(H, W)`` grayscale uint8 image.

        Returns:
            A list of ``Face``, one per detected face.
        """
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        boxes = self.detector.detect(gray)
        if len(boxes) == 0:
            return []
        probs = self.classifier.predict(
            crop_faces(gray, boxes, self.classifier.input_size, self.crop_margin))
        labels = self.classifier.labels
        faces = []
        for box, p in zip(boxes, probs):
            best = int(np.argmax(p))
            faces.append(Face(tuple(int(v) for v in box), labels[best], float(p[best]),
                              dict(zip(labels, (float(v) for v in p)))))
        return faces

    def process(self, frame):
        """``analyse`` then draw: returns ``(annotated BGR copy, faces)``."""
        faces = self.analyse(frame)
        annotated = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
        return draw_faces(annotated, faces), faces
