"""Face tracking between detections, with stable ids, and the full-frame search spread over frames.

A full-frame Haar search costs most of a frame's time.  ``FaceTracker``
follows each known face on every frame by searching a window around it, at
scales near its size, which costs a small fraction of the full search.  New
faces come from the full search, which is not run on one frame in
``detect_every``: its scale pyramid is split into ``detect_every`` bands of
near-equal cost (``FaceDetector.bands``) and each frame searches one band,
so the whole pyramid is searched every ``detect_every`` frames at the same
total cost and no frame pays for all of it.  The bands return the cascade's
raw hits; the hits of the latest search of every band are grouped together
as ``detectMultiScale`` groups them, which on an unchanged frame gives
exactly the full search's faces; the first frame of a source searches
every band at once, and so does a frame that starts a new scene (a cut:
its thumbnail differs from the previous frame's by more than
``cut_threshold`` grey levels on average), whose faces would otherwise wait
for their band while the boxes of the last scene's faces lingered.  A band
whose picture has not changed since its last search (a thumbnail compared
cell by cell) is not searched again.  Each face keeps an integer id for as
long as it is tracked, so its probabilities can be smoothed over time.
"""
from dataclasses import dataclass

import cv2
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
    """Follow known faces on every frame; find new ones with the spread full-frame search.

    Args:
        detector: a ``vision.detector.FaceDetector``.
        detect_every: frames per full-frame search (k): the search is
            spread over k frames, one band of its scale pyramid each; a face
            entering the picture is found within k frames.  1 searches the
            whole frame on every frame.
        search_margin: the window searched around a tracked face extends
            this fraction of its side on every side.
        max_missed: a face not found for more frames than this is dropped;
            until then its last box is kept (default: ``detect_every``).
        match_iou: a detection continues a track when their boxes overlap
            at least this much (intersection over union).
        still_threshold: a band is not searched again while the frame's
            thumbnail (cells of half the smallest face's side) differs from
            the one it was last searched on by less than this many grey
            levels in every cell; its earlier hits stand.  0 searches every
            band when its turn comes.
        cut_threshold: a frame whose thumbnail differs from the previous
            frame's by more than this many grey levels on average (mean
            absolute difference of the cells) starts a new scene: the
            tracks are dropped and every band is searched on it at once.
            Cuts in the bundled and OpenCV sample clips differ by 17-44
            grey levels, other frames by at most 4 (``docs/benchmarks.md``).
            0 never does.
        spread: False runs the whole search on one frame in k (and on every
            frame while no face is tracked), as before the spread search
            (kept for comparisons: ``bench``, ``docs/benchmarks.md``).
    """

    TRACK_PX = 32  # face side, in pixels, at which a tracked face is searched for
    TRACK_NEIGHBORS = 3  # near a known face, fewer overlapping hits suffice

    def __init__(self, detector, detect_every=5, search_margin=0.5, max_missed=None, match_iou=0.3,
                 still_threshold=0.0, cut_threshold=0.0, spread=True):
        self.detector = detector
        self.detect_every = max(1, int(detect_every))
        self.search_margin = search_margin
        self.max_missed = self.detect_every if max_missed is None else max_missed
        self.match_iou = match_iou
        self.still_threshold = float(still_threshold)
        self.cut_threshold = float(cut_threshold)
        self.spread = spread and self.detect_every > 1
        self.tracks = []
        self._frame = 0
        self._next_id = 1
        self._bands = (None, [])  # (frame shape, FaceDetector.bands of it)
        self._hits = {}  # band index -> (N, 4) raw hits of its latest search, pixels of the searched image
        self._thumbs = {}  # band index -> the thumbnail it was last searched on
        self._last_thumb = None  # the previous frame's thumbnail, for cuts
        #: The band searched on the last frame (None: none, or the whole pyramid),
        #: whether the last frame's search was skipped as unchanged, and whether the
        #: last frame was a cut; for tests and metrics.
        self.last_band, self.last_skipped, self.last_cut = None, False, False

    def update(self, gray):
        """Advance by one frame.

        Args:
            gray: ``(H, W)`` uint8 grayscale frame.

        Returns:
            The live ``Track`` list, each with its box in this frame.
        """
        if not self.spread:
            if self._frame % self.detect_every == 0 or not self.tracks:
                self._associate(self.detector.detect(gray))
            else:
                self._follow(gray)
        else:
            small = self.detector.shrink(gray)
            thumb = (self._thumbnail(small, gray.shape) if self.still_threshold > 0 or self.cut_threshold > 0
                     else None)
            self.last_cut = self._frame > 0 and self._is_cut(thumb)
            self._last_thumb = thumb
            still = thumb if self.still_threshold > 0 else None
            if self._frame == 0 or self.last_cut:  # a source's first frame, or a new scene: every band, at once
                self.tracks = []  # none of the last scene's faces is in this one
                self.last_band, self.last_skipped = None, False
                self._associate(self._search_all(gray, small, still))
            else:
                self._follow(gray)
                self._search_band(gray, small, still)
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
        self._hits, self._thumbs, self._last_thumb = {}, {}, None
        if restart_ids:
            self._next_id = 1

    def _is_cut(self, thumb):
        """Whether the frame of ``thumb`` starts a new scene (see ``cut_threshold``); a frame of
        another size does too."""
        if self.cut_threshold <= 0:
            return False
        last = self._last_thumb
        return last is None or last.shape != thumb.shape or \
            float(np.abs(thumb - last).mean()) > self.cut_threshold

    def _search_all(self, gray, small, thumb):
        """Search every band of ``gray`` and keep their hits: the whole search's faces (boxes in pixels).

        ``small`` is ``gray`` as ``FaceDetector.shrink`` made it, ``thumb``
        its thumbnail (None without ``still_threshold``).
        Keeping each band's hits means the groupings of the next frames start
        from the whole pyramid, not from the few bands searched since.
        """
        self._start_bands(gray.shape)
        for index, band in enumerate(self._bands[1]):
            if band is not None:
                self._hits[index] = self.detector.band_hits(small, band)
                if thumb is not None:
                    self._thumbs[index] = thumb
        if not self._hits:
            return np.zeros((0, 4), np.int32)
        hits = np.concatenate(list(self._hits.values()))
        return self.detector.group_hits(hits, hits, gray.shape)

    def _search_band(self, gray, small, thumb):
        """Search this frame's band and group the hits of every band's latest search.

        ``small`` and ``thumb`` are as for ``_search_all``.

        The hits of the bands whose picture equals this frame's (every band
        searched on a thumbnail within ``still_threshold`` of this one, and
        this frame's own) are current: a face they show re-anchors the track
        it overlaps (IoU >= ``match_iou``).  The hits of every band, some
        taken a few frames ago, show where faces were: a face among them
        that this frame's hits support starts a track unless its centre
        lies in a tracked face's box, or re-anchors a track that following
        lost on this frame (the same id for a face that changed where one
        was).  A face followed on this frame keeps the box following gave it
        unless current hits place it, since older hits would pull a moving
        face back to where it was.
        """
        if self._bands[0] != gray.shape:
            self._start_bands(gray.shape)
        index = self._frame % self.detect_every
        band = self._bands[1][index]
        self.last_band, self.last_skipped = index, False
        if band is None:
            return

        def unchanged(i):
            return thumb is not None and i in self._thumbs and \
                np.abs(thumb - self._thumbs[i]).max() < self.still_threshold

        if unchanged(index):
            self.last_skipped = True
            fresh = self._hits.get(index, np.zeros((0, 4), np.int32))
        else:
            fresh = self.detector.band_hits(small, band)
            self._hits[index] = fresh
            if thumb is not None:
                self._thumbs[index] = thumb
        if len(fresh) == 0:
            return  # no new evidence on this frame: nothing new to start
        current = [self._hits[i] for i in self._hits if i == index or unchanged(i)]
        for box in self.detector.group_hits(np.concatenate(current), fresh, gray.shape):
            self._place(tuple(int(v) for v in box), reanchor=True)
        if len(current) < len(self._hits):  # some hits are older: their faces, placed as such
            for box in self.detector.group_hits(np.concatenate(list(self._hits.values())), fresh, gray.shape):
                self._place(tuple(int(v) for v in box), reanchor=False)

    def _start_bands(self, shape):
        """Split the search of frames of ``shape`` into bands anew and forget the hits of the old ones."""
        self._bands = (shape, self.detector.bands(shape, self.detect_every))
        self._hits, self._thumbs = {}, {}

    def _place(self, box, reanchor):
        """A face the search found: re-anchor the track it overlaps (any, or one lost on this frame
        unless ``reanchor``), or start a track unless it lies in a tracked face's box."""
        scores = [iou(t.box, box) for t in self.tracks]
        if scores and max(scores) >= self.match_iou:
            track = self.tracks[int(np.argmax(scores))]
            if reanchor or track.missed > 0:
                track.box, track.missed = box, 0
        elif not any(_inside(box, t.box) for t in self.tracks):
            self.tracks.append(Track(self._next_id, box))
            self._next_id += 1

    def _thumbnail(self, small, shape):
        """The frame (``small``: as ``FaceDetector.shrink`` made it from a frame of ``shape``) in cells
        of half the smallest face's side: ``(rows, columns)`` int16 grey levels."""
        cell = max(4.0, self.detector.min_face_px / 2)
        size = (max(1, int(np.ceil(shape[1] / cell))), max(1, int(np.ceil(shape[0] / cell))))
        return cv2.resize(small, size, interpolation=cv2.INTER_AREA).astype(np.int16)

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


def _inside(box, other):
    """True when the centre of ``box`` lies inside ``other`` (both ``(x, y, w, h)``)."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return other[0] <= cx < other[0] + other[2] and other[1] <= cy < other[1] + other[3]
