"""The per-frame work: find faces, classify them, draw labelled boxes.

Nothing here opens a camera or a server: ``FramePipeline.process`` takes a
BGR frame and returns the annotated frame and the faces, so it is tested on
plain arrays.
"""
import time

import cv2
import numpy as np

from fer_server.vision.detector import clip_boxes
from fer_server.vision.frames import Face, crop_faces, draw_faces, grayscale, to_uint8_image
from fer_server.vision.tracker import FaceTracker


class FramePipeline:
    """Detect or track, crop, classify (one batched call per frame) and draw.

    Args:
        detector: a ``FaceDetector``.
        classifier: a ``model.classifier.Classifier``.
        crop_margin: see ``crop_faces``.
        detect_every: frames over which one full-frame search is spread,
            faces followed on every frame (see ``vision.tracker.FaceTracker``);
            1 searches the whole frame on every frame.
        still_threshold, cut_threshold, spread: ``FaceTracker``'s.
        classify_every: a tracked face is classified on one frame in this
            many (its first frame always; the faces of a frame take turns by
            track id), its last probabilities reused in between; 1
            classifies every face on every frame.  Ignored with
            ``background``.
        smoothing: weight of the past in the exponential moving average of
            each tracked face's probabilities, in [0, 1); 0 shows each
            frame's raw probabilities.
        image_pad: ``faces_in_image`` only (never video frames): border added
            around the image before the face search, as a fraction of its
            shorter side (see ``FaceDetector.detect_padded``); 0 turns it off.
        image_min_side_px: ``faces_in_image`` only: an image whose shorter
            side is below this many pixels is enlarged to it for the face
            search (the crops still come from the image itself); 0 never.
        background: a ``vision.background.BackgroundClassifier`` (live
            sources): a face seen before is not classified on its frame but
            handed to it, and shows its newest probabilities back from it
            (``label_lag``); a new face is still classified on its own frame.
            None (offline analysis, tests): every face on its frame, as
            ``classify_every`` says.
    """

    def __init__(self, detector, classifier, crop_margin=0.0, detect_every=1, smoothing=0.0, image_pad=0.0,
                 image_min_side_px=0, still_threshold=0.0, cut_threshold=0.0, spread=True,
                 classify_every=1, background=None):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if image_pad < 0:
            raise ValueError(f"image_pad must be >= 0, got {image_pad}")
        if image_min_side_px < 0:
            raise ValueError(f"image_min_side_px must be >= 0, got {image_min_side_px}")
        if classify_every < 1:
            raise ValueError(f"classify_every must be >= 1, got {classify_every}")
        self.classify_every = int(classify_every)
        self._frame = 0  # frames since the last reset, for classify_every's turns
        self.image_pad = image_pad
        self.image_min_side_px = image_min_side_px
        self.detector = detector
        self.classifier = classifier
        self.crop_margin = crop_margin
        self.smoothing = smoothing
        self.tracker = FaceTracker(detector, detect_every, still_threshold=still_threshold,
                                   cut_threshold=cut_threshold, spread=spread)
        self._smoothed = {}  # track id -> (C,) float32 probabilities
        self._label_frame = {}  # track id -> the frame whose crop its newest probabilities came from
        self.background = background
        #: Frames between the last frame and the oldest crop behind a label it shows (0: every
        #: face classified on it; 0 without faces).
        self.label_lag = 0
        #: ms spent on the last frame per stage: ``detect`` (grayscale, detection or
        #: tracking), ``classify`` (crop, inference, smoothing), ``draw``.
        self.timings = {}

    def reset(self, restart_ids=False):
        """Forget tracks and smoothed probabilities (a new video or a jump in it);
        ``restart_ids``: number the next faces from 1 (see ``FaceTracker.reset``)."""
        self.tracker.reset(restart_ids)
        self._smoothed, self._label_frame = {}, {}
        self._frame = self.label_lag = 0
        if self.background is not None:
            self.background.forget(self)

    def find_faces(self, frame):
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
        gray = grayscale(frame)
        tracks = self.tracker.update(gray)
        detected = time.perf_counter()
        crops = self._crops(gray, [t.box for t in tracks], frame)
        if self.background is None:
            due = [i for i, t in enumerate(tracks) if t.id not in self._smoothed
                   or (self._frame + t.id) % self.classify_every == 0]
        else:
            due = [i for i, t in enumerate(tracks) if t.id not in self._smoothed]
        probs = dict(zip(due, self._predict(crops if len(due) == len(tracks) else crops[due])))
        label_frame = {tracks[i].id: self._frame for i in due}
        if self.background is not None:
            for i, track in enumerate(tracks):
                if i in probs:
                    continue
                taken = self.background.take(self, track.id)
                if taken is not None:
                    probs[i], label_frame[track.id] = taken
                self.background.submit(self, track.id, crops[i], self._frame)
            self.background.keep(self, [t.id for t in tracks])
        smoothed = {}
        for i, track in enumerate(tracks):
            previous = self._smoothed.get(track.id)
            p = probs.get(i)
            if p is None:  # not its turn, or not back from the background yet: the last probabilities stand
                p = previous
            elif self.smoothing and previous is not None:
                p = self.smoothing * previous + (1.0 - self.smoothing) * p
            smoothed[track.id] = p
            label_frame.setdefault(track.id, self._label_frame.get(track.id, self._frame))
        self._smoothed = smoothed
        self._label_frame = {t.id: label_frame[t.id] for t in tracks}
        self.label_lag = self._frame - min(self._label_frame.values(), default=self._frame)
        self._frame += 1
        faces = [self._face(t.box, smoothed[t.id], t.id, crop) for t, crop in zip(tracks, crops)]
        self.timings = {"detect": (detected - started) * 1e3,
                        "classify": (time.perf_counter() - detected) * 1e3}
        return faces

    def faces_in_image(self, image):
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
        gray = grayscale(image)
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
        faces = self.find_faces(frame)
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
