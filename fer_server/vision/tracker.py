"""Face tracking between detections, with stable ids.

A full-frame Haar search costs most of a frame's time.  ``FaceTracker`` runs
it only every ``detect_every`` frames; on the frames between, it searches a
window around each tracked face, at scales near the face's size, which costs
a small fraction of the full search.  Each face keeps an integer id for as
long as it is tracked, so its probabilities can be smoothed over time.
"""
from dataclasses import dataclass

import numpy as np


def iou(a, b):
    """Intersection over union of two ``(x, y, w, h)`` boxes, in [0, 1]."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = min(ax + aw, bx + bw) - max(ax, bx)
    h = min(ay + ah, by + bh) - max(ay, by)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / float(aw * ah + bw * bh - inter)


@dataclass
class Track:
    """One tracked face: ``box`` ``(x, y, w, h)`` in pixels, ``missed`` frames since last seen."""

    id: int
    box: tuple
    missed: int = 0


class FaceTracker:
    """Detect every ``detect_every`` frames, follow faces in between.

    Args:
        detector: a ``vision.detector.FaceDetector``.
        detect_every: frames between full-frame detections (k); 1 detects
            on every frame.  A face entering the picture is found within k
            frames.
        search_margin: the window searched around a tracked face extends
            this fraction of its side on every side.
        max_missed: a face not found for more frames than this is dropped;
            until then its last box is kept (default: ``detect_every``, so
            the next full detection confirms or drops it).
        match_iou: a detection continues a track when their boxes overlap
            at least this much (intersection over union).
    """

    TRACK_PX = 32  # face side, in pixels, at which a tracked face is searched for
    TRACK_NEIGHBORS = 3  # near a known face, fewer overlapping hits suffice

    def __init__(self, detector, detect_every=5, search_margin=0.5, max_missed=None, match_iou=0.3):
        self.detector = detector
        self.detect_every = max(1, int(detect_every))
        self.search_margin = search_margin
        self.max_missed = self.detect_every if max_missed is None else max_missed
        self.match_iou = match_iou
        self.tracks = []
        self._frame = 0
        self._next_id = 1

    def update(self, gray):
        """Advance by one frame.

        Args:
            gray: ``(H, W)`` uint8 grayscale frame.

        Returns:
            The live ``Track`` list, each with its box in this frame.
        """
        if self._frame % self.detect_every == 0 or not self.tracks:
            self._associate(self.detector.detect(gray))
        else:
            self._follow(gray)
        self._frame += 1
        return list(self.tracks)

    def reset(self, restart_ids=False):
        """Forget every track (a new video, or a jump in the source).

        ``restart_ids`` numbers the next tracks from 1 again, as for a fresh
        tracker (offline analysis: a video's face ids do not depend on what
        the process analysed before); otherwise ids stay unique.
        """
        self.tracks = []
        self._frame = 0
        if restart_ids:
            self._next_id = 1

    def _associate(self, boxes):
        unmatched = list(range(len(boxes)))
        for track in self.tracks:
            scores = [iou(track.box, boxes[i]) for i in unmatched]
            if scores and max(scores) >= self.match_iou:
                i = unmatched.pop(int(np.argmax(scores)))
                track.box, track.missed = tuple(int(v) for v in boxes[i]), 0
            else:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for i in unmatched:
            self.tracks.append(Track(self._next_id, tuple(int(v) for v in boxes[i])))
            self._next_id += 1

    def _follow(self, gray):
        height, width = gray.shape[:2]
        for track in self.tracks:
            x, y, w, h = track.box
            m = int(round(max(w, h) * self.search_margin))
            x0, y0 = max(0, x - m), max(0, y - m)
            x1, y1 = min(width, x + w + m), min(height, y + h + m)
            # Searched at a scale where the face spans about TRACK_PX pixels: a few
            # cascade windows at a few sizes, a small fraction of a full search.
            found = self.detector.detect(gray[y0:y1, x0:x1], min_px=int(w * 0.75), max_px=int(w * 1.33),
                                         scale=min(1.0, self.TRACK_PX / w),
                                         min_neighbors=self.TRACK_NEIGHBORS)
            if len(found):
                best = max(found, key=lambda b: iou((b[0] + x0, b[1] + y0, b[2], b[3]), track.box))
                track.box = (int(best[0]) + x0, int(best[1]) + y0, int(best[2]), int(best[3]))
                track.missed = 0
            else:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
