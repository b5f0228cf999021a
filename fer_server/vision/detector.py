"""Face detection: OpenCV's Haar cascade, with the geometry of searching a downscaled,
padded or enlarged image and mapping the boxes back to the frame's pixels."""
import cv2
import numpy as np

from fer_server.vision.tracker import iou

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

    def search_scale(self, width):
        """The downscale factor ``detect`` applies to a frame ``width`` pixels wide (1.0: none)."""
        return self.detect_width / width if self.detect_width and width > self.detect_width else 1.0

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
            scale = self.search_scale(gray.shape[1])
        if scale < 1.0:
            gray = _shrink(gray, scale)
        else:
            scale = 1.0
        min_side = max(self.WINDOW_PX, round((min_px or self.min_face_px) * scale))
        max_side = round(max_px * scale) if max_px else 0
        if max_side and max_side < min_side or min(gray.shape[:2]) < min_side:
            return np.zeros((0, 4), np.int32)
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors if min_neighbors is None else min_neighbors,
            minSize=(min_side, min_side), maxSize=(max_side, max_side))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return np.round(boxes / scale).astype(np.int32)

    def pyramid(self, shape):
        """The scale levels of a full ``detect`` of a frame of ``shape``: ``[(window side, cost)]``.

        Replays the level loop of OpenCV's ``CascadeClassifier.detectMultiScale``
        (modules/objdetect/src/cascadedetect.cpp): factors ``scale_factor**i``
        from 1, window side ``round(24 * factor)`` pixels of the downscaled
        image, levels below the smallest face skipped, the loop ending where
        the window outgrows the image.  The cost of a level is the number of
        window positions it evaluates: the image shrunk by the factor, with a
        stride of 2 pixels below a factor of 2 and 1 from there (the same
        file); timed level by level on Megamind.avi, the levels' times
        followed this (the jump at a factor of 2 included).

        Args:
            shape: ``(H, W, ...)`` of the frame in pixels.

        Returns:
            One ``(side, cost)`` per level, sides increasing, costs relative.
        """
        scale = self.search_scale(shape[1])
        width, height = max(1, round(shape[1] * scale)), max(1, round(shape[0] * scale))
        min_side = max(self.WINDOW_PX, round(self.min_face_px * scale))
        levels, factor = [], 1.0
        while True:
            side = round(self.WINDOW_PX * factor)
            if side > min(width, height):
                return levels
            if side >= min_side:
                step = 1 if factor >= 2 else 2
                levels.append((side, (width / factor) * (height / factor) / step ** 2))
            factor *= self.scale_factor

    def bands(self, shape, n):
        """The full search of a frame of ``shape`` split into ``n`` bands of scale levels of near-equal cost.

        Searching each band once (``band_hits(shrink(gray), band)``) runs every
        level of one full ``detect`` exactly once: the bands are contiguous,
        disjoint and cover the pyramid.  Each band's cost is at most the
        larger of the dearest single level and the full search's cost over
        ``n`` (a linear partition, minimising the dearest band).

        Args:
            shape: ``(H, W, ...)`` of the frame in pixels.
            n: the number of bands (``FaceTracker``'s ``detect_every``).

        Returns:
            ``n`` entries, each ``(min side, max side)`` in pixels of the
            downscaled image, or None for a band with no level (a pyramid of
            fewer than ``n`` levels); the dearest bands first, since the
            smallest faces lie there.
        """
        levels = self.pyramid(shape)
        # merge equal sides (scale factors near 1): a band boundary cannot fall between them
        sides, costs = [], []
        for side, cost in levels:
            if sides and sides[-1] == side:
                costs[-1] += cost
            else:
                sides.append(side)
                costs.append(cost)
        m = len(sides)
        if m == 0:
            return [None] * n
        groups = _linear_partition(costs, min(n, m))
        bands = [(sides[a], sides[b - 1]) for a, b in groups]
        order = sorted(range(len(bands)), key=lambda i: -sum(costs[groups[i][0]:groups[i][1]]))
        return [bands[i] for i in order] + [None] * (n - len(bands))

    def shrink(self, gray):
        """``gray`` downscaled as ``detect`` downscales a whole frame (to ``detect_width``), for ``band_hits``."""
        scale = self.search_scale(gray.shape[1])
        return _shrink(gray, scale) if scale < 1.0 else gray

    def band_hits(self, small, band):
        """The cascade's raw hits (before grouping) in one band of a full search of a frame.

        Args:
            small: the frame as ``shrink`` returns it (``(h, w)`` uint8).
            band: ``(min side, max side)``, one of ``bands(frame.shape, n)``.

        Returns:
            ``(N, 4)`` int32 ``(x, y, w, h)`` in pixels of ``small``, for
            ``group_hits``.
        """
        hits = self.cascade.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=0,
                                             minSize=(band[0], band[0]), maxSize=(band[1], band[1]))
        return np.asarray(hits, np.int32).reshape(-1, 4)

    def group_hits(self, hits, fresh, shape):
        """Group raw hits into faces as ``detect`` does, keeping the faces that ``fresh`` hits support.

        ``detectMultiScale`` groups its hits with ``groupRectangles(hits,
        min_neighbors, 0.2)``; grouping the hits of every band of one frame
        gives exactly ``detect``'s boxes (tests/test_tracker.py checks it).

        Args:
            hits: ``(N, 4)`` ``band_hits`` of several bands (all of them:
                the full search).
            fresh: ``(M, 4)`` the hits of this frame's own search; a face
                is returned only if one of them overlaps it (IoU >= 0.3), so
                hits of a face that has gone cannot bring it back.
            shape: the frame's ``(H, W, ...)``.

        Returns:
            ``(K, 4)`` int32 boxes in pixels of the frame.
        """
        if len(hits) == 0:
            return np.zeros((0, 4), np.int32)
        grouped, _ = cv2.groupRectangles(np.asarray(hits).tolist(), self.min_neighbors, 0.2)
        grouped = np.asarray(grouped, np.float64).reshape(-1, 4)
        keep = [g for g in grouped if any(iou(g, f) >= 0.3 for f in fresh)]
        scale = self.search_scale(shape[1])
        return np.round(np.asarray(keep, np.float64).reshape(-1, 4) / scale).astype(np.int32)

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

def _shrink(gray, scale):
    """``gray`` downscaled by ``scale`` < 1 (area averaging), as every search downscales it."""
    return cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


def _linear_partition(costs, k):
    """Split ``costs`` into ``k`` contiguous non-empty groups minimising the largest group sum.

    Dynamic programming over prefix sums, O(k n^2) (n is a pyramid's 10-30
    levels).  Returns ``k`` ``(start, end)`` index pairs.
    """
    n = len(costs)
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    best = np.full((k + 1, n + 1), np.inf)
    cut = np.zeros((k + 1, n + 1), int)
    best[0, 0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            for c in range(j - 1, i):
                worst = max(best[j - 1, c], prefix[i] - prefix[c])
                if worst < best[j, i]:
                    best[j, i], cut[j, i] = worst, c
    groups, end = [], n
    for j in range(k, 0, -1):
        groups.append((int(cut[j, end]), int(end)))
        end = cut[j, end]
    return groups[::-1]


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
