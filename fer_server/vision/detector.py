"""Face detection: OpenCV's Haar cascade, with the geometry of searching a downscaled,
padded or enlarged image and mapping the boxes back to the frame's pixels."""
import cv2
import numpy as np

CASCADE_FILE = "haarcascade_frontalface_default.xml"


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
