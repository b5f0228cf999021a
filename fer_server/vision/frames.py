"""Frame helpers: the classified ``Face``, image arrays brought to uint8, crops for the
classifier, and the labelled boxes drawn on a frame."""
from dataclasses import dataclass, field

import cv2
import numpy as np


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
            ``fer_server.model.gradcam.GradCam``; None when not made by a ``FramePipeline``).
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

def grayscale(frame):
    """``to_uint8_image``, then ``(H, W)`` uint8 grayscale."""
    frame = to_uint8_image(frame)
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
