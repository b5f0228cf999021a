import cv2
import numpy as np
import pytest

from fer_server.vision.detector import FaceDetector

from fer_server.vision.frames import crop_faces

from fer_server.vision.pipeline import FramePipeline
from fer_server.vision.tracker import FaceTracker, iou
from test_pipeline import read_frames


def canvas_with(faces, positions, side=110, size=(240, 400)):
    """A grey frame with 48x48 faces enlarged to ``side`` pixels at the given top-left corners."""
    frame = np.full(size, 170, np.uint8)
    for face, (x, y) in zip(faces, positions):
        frame[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    return frame


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)


def test_ids_stay_stable_along_the_clip(clip):
    tracker = FaceTracker(FaceDetector(), detect_every=3)
    ids = []
    for frame in read_frames(clip):
        tracks = tracker.update(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
        assert len(tracks) == 1
        ids.append(tracks[0].id)
    assert set(ids) == {ids[0]}  # the face drifts a little; its id never changes


def test_tracked_box_follows_a_moving_face(faces):
    tracker = FaceTracker(FaceDetector(), detect_every=100)
    face = faces["Happy"]
    first = tracker.update(canvas_with([face], [(40, 60)]))[0]
    first_box = tuple(first.box)  # the track object is updated in place
    moved = tracker.update(canvas_with([face], [(58, 70)]))[0]  # between detections
    assert moved.id == first.id
    # The face moved 18 px right and 10 px down and kept its size: so must its box, give or take
    # the 2 px that the cascade's scale steps allow.
    dx, dy = moved.box[0] - first_box[0], moved.box[1] - first_box[1]
    assert abs(dx - 18) <= 2 and abs(dy - 10) <= 2, (first_box, moved.box)
    assert abs(moved.box[2] - first_box[2]) <= 2 and abs(moved.box[3] - first_box[3]) <= 2
    # and it lies inside the 110 px square where the face was drawn
    x, y, w, h = moved.box
    assert 58 <= x and 70 <= y and x + w <= 58 + 110 and y + h <= 70 + 110


def test_new_face_is_found_within_k_frames(faces):
    k = 4
    tracker = FaceTracker(FaceDetector(), detect_every=k)
    a, b = faces["Happy"], faces["Surprise"]
    seen_b = None
    for n in range(12):
        frame = canvas_with([a, b], [(20, 60), (260, 60)]) if n >= 3 else canvas_with([a], [(20, 60)])
        tracks = tracker.update(frame)
        if len(tracks) == 2 and seen_b is None:
            seen_b = n
    assert seen_b is not None and seen_b - 3 < k
    assert len({t.id for t in tracker.tracks}) == 2


def test_lost_face_is_dropped_after_max_missed(faces):
    tracker = FaceTracker(FaceDetector(), detect_every=1, max_missed=2)
    tracker.update(canvas_with([faces["Happy"]], [(40, 60)]))
    empty = np.full((240, 400), 170, np.uint8)
    assert [len(tracker.update(empty)) for _ in range(3)] == [1, 1, 0]


def test_smoothing_off_gives_raw_probabilities(clip, classifier):
    pipeline = FramePipeline(FaceDetector(), classifier, detect_every=1, smoothing=0.0)
    for frame in read_frames(clip)[:4]:
        faces = pipeline.find_faces(frame)
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        raw = classifier.predict(crop_faces(gray, np.array([faces[0].box])))[0]
        np.testing.assert_allclose(list(faces[0].probabilities.values()), raw, atol=1e-6)


class ScriptedClassifier:
    """A classifier stand-in whose n-th call returns ``script[n]`` for every face."""

    labels = ("A", "B", "C")
    input_size = 48
    input_shape = (48, 48, 1)

    def __init__(self, script):
        self.script = iter(script)

    def predict(self, crops):
        return np.tile(np.asarray(next(self.script), np.float32), (len(crops), 1))


def test_smoothing_is_an_exponential_moving_average(clip):
    # raw probabilities (1, 0, 0), (0, 1, 0), (0, 0, 1) on three frames; smoothing 0.6 keeps 0.6 of the past:
    # frame 2: 0.6 * (1, 0, 0) + 0.4 * (0, 1, 0); frame 3: 0.6 * that + 0.4 * (0, 0, 1)
    classifier = ScriptedClassifier(np.eye(3))
    smooth = FramePipeline(FaceDetector(), classifier, detect_every=1, smoothing=0.6)
    expected = [[1, 0, 0], [0.6, 0.4, 0], [0.36, 0.24, 0.4]]
    for frame, want in zip(read_frames(clip)[:3], expected):
        faces = smooth.find_faces(frame)
        assert len(faces) == 1
        np.testing.assert_allclose(list(faces[0].probabilities.values()), want, atol=1e-6)
        assert faces[0].label == "ABC"[int(np.argmax(want))]
    with pytest.raises(ValueError):
        FramePipeline(FaceDetector(), classifier, smoothing=1.0)
