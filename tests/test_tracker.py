import cv2
import numpy as np
import pytest

from pipeline import FaceDetector, FramePipeline, crop_faces
from tracker import FaceTracker, iou
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
    moved = tracker.update(canvas_with([face], [(58, 70)]))[0]  # between detections
    assert moved.id == first.id
    assert iou(moved.box, FaceDetector().detect(canvas_with([face], [(58, 70)]))[0]) > 0.8


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
        faces = pipeline.analyse(frame)
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        raw = classifier.predict(crop_faces(gray, np.array([faces[0].box])))[0]
        np.testing.assert_allclose(list(faces[0].probabilities.values()), raw, atol=1e-6)


def test_smoothing_is_an_exponential_moving_average(clip, classifier):
    raw = FramePipeline(FaceDetector(), classifier, detect_every=1, smoothing=0.0)
    smooth = FramePipeline(FaceDetector(), classifier, detect_every=1, smoothing=0.6)
    expected = None
    for frame in read_frames(clip)[:4]:
        p = np.array(list(raw.analyse(frame)[0].probabilities.values()))
        expected = p if expected is None else 0.6 * expected + 0.4 * p
        got = np.array(list(smooth.analyse(frame)[0].probabilities.values()))
        np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError):
        FramePipeline(FaceDetector(), classifier, smoothing=1.0)
