"""Classification beside the stream (vision.background): the newest crop per face, sources in turn, labels a frame late."""
import threading
import time

import numpy as np
import pytest

from fer_server.vision.background import BackgroundClassifier
from fer_server.vision.detector import FaceDetector
from fer_server.vision.pipeline import FramePipeline
from test_tracker import canvas_with


class GatedClassifier:
    """Returns, for each crop, a one-hot row at index ``crop[0, 0, 0]`` (a marker written into the crop);
    holds each call until ``gate`` is set when ``gated``, and records the markers of every call."""

    labels = ("A", "B", "C", "D", "E", "F", "G")
    input_size = 48
    input_shape = (48, 48, 1)

    def __init__(self, gated=False):
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.gated = gated
        self.calls = []

    def predict(self, crops):
        self.entered.set()
        if self.gated:
            assert self.gate.wait(10)
            self.gate.clear()
        markers = [int(c[0, 0, 0]) for c in crops]
        self.calls.append(markers)
        return np.eye(len(self.labels), dtype=np.float32)[markers]


def crop(marker):
    c = np.zeros((48, 48, 1), np.float32)
    c[0, 0, 0] = marker
    return c


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_newer_crop_replaces_one_not_yet_classified_and_sources_take_turns():
    classifier = GatedClassifier(gated=True)
    background = BackgroundClassifier(classifier, nice=0)
    a, b = object(), object()
    background.submit(a, 1, crop(0), frame_index=0)
    assert classifier.entered.wait(10)  # the thread holds a's first call at the gate
    background.submit(a, 1, crop(1), 1)
    background.submit(a, 1, crop(2), 2)  # replaces crop 1, never classified
    background.submit(a, 5, crop(3), 2)
    background.submit(b, 9, crop(4), 7)
    assert background.pending() == 3
    for _ in range(3):
        classifier.gate.set()
        wait_until(lambda: not classifier.gate.is_set())
    wait_until(lambda: len(classifier.calls) == 3)
    # a's first call, then b (a was served last), then a's two faces in one call; crop 1 never
    assert classifier.calls == [[0], [4], [2, 3]]
    p, frame = background.take(a, 1)
    assert frame == 2 and int(np.argmax(p)) == 2
    assert background.take(a, 1) is None  # taken once
    p, frame = background.take(b, 9)
    assert frame == 7 and int(np.argmax(p)) == 4
    assert background.faces_classified == 4 and background.calls == 3
    background.close()


def test_keep_and_forget_drop_the_faces_that_are_gone():
    classifier = GatedClassifier(gated=True)
    background = BackgroundClassifier(classifier, nice=0)
    a, b = object(), object()
    background.submit(a, 1, crop(0), 0)
    assert classifier.entered.wait(10)
    background.submit(a, 1, crop(1), 1)
    background.submit(a, 2, crop(2), 1)
    background.submit(b, 3, crop(3), 1)
    background.keep(a, [2])  # face 1 left a's picture: its pending crop goes
    background.forget(b)  # b was reset: all of it goes
    assert background.pending() == 1
    classifier.gated = False
    classifier.gate.set()
    wait_until(lambda: len(classifier.calls) == 2)
    assert classifier.calls == [[0], [2]]
    wait_until(lambda: background.take(a, 2) is not None)
    assert background.take(b, 3) is None
    background.close()
    with pytest.raises(RuntimeError, match="closed"):
        background.submit(a, 1, crop(0), 0)


def test_close_ends_the_thread_and_a_failing_call_does_not():
    failed = threading.Event()

    class Failing(GatedClassifier):
        def predict(self, crops):
            if crops[0, 0, 0, 0] == 6:
                failed.set()
                raise ValueError("bad crop")
            return super().predict(crops)

    background = BackgroundClassifier(Failing(), nice=0)
    owner = object()
    background.submit(owner, 1, crop(6), 0)
    assert failed.wait(10)
    background.submit(owner, 2, crop(1), 1)
    wait_until(lambda: background.take(owner, 2) is not None)  # the thread outlived the failing call
    assert background.take(owner, 1) is None  # the failed face has no result; it keeps its last label
    thread = background._thread
    background.close()
    assert not thread.is_alive()


def test_the_pipeline_labels_a_new_face_on_its_frame_and_a_known_one_from_the_background(faces):
    # One face on a still picture, smoothing off.  The classifier returns, per crop, a one-hot row at the
    # crop's top-left value; every crop of this picture has the same one, so the row is known: index m.
    frame = canvas_with([faces["Happy"]], [(20, 60)])
    sync, behind = GatedClassifier(), GatedClassifier()
    background = BackgroundClassifier(behind, nice=0)
    pipeline = FramePipeline(FaceDetector(), sync, detect_every=1, smoothing=0.0, background=background)
    first = pipeline.find_faces(frame)
    assert len(first) == 1 and len(sync.calls) == 1  # new: classified on its own frame
    assert pipeline.label_lag == 0
    marker = sync.calls[0][0]
    for n in range(1, 5):
        shown = pipeline.find_faces(frame)  # takes the result of frame n - 1's crop (none on frame 1)
        assert len(sync.calls) == 1  # a known face is not classified on its frame
        assert pipeline.label_lag == 1  # it shows the label of the crop of the frame before
        assert shown[0].label == "ABCDEFG"[marker]
        wait_until(lambda: len(behind.calls) == n)  # frame n's crop, classified in the background
    assert behind.calls == [[marker]] * 4
    pipeline.find_faces(frame)
    pipeline.reset()
    assert background.pending() == 0 and pipeline.label_lag == 0  # reset forgets the face's queued crop
    background.close()


def test_without_a_background_every_face_is_classified_on_its_frame(faces):
    frame = canvas_with([faces["Happy"]], [(20, 60)])
    sync = GatedClassifier()
    pipeline = FramePipeline(FaceDetector(), sync, detect_every=1, smoothing=0.0)
    for n in range(1, 4):
        pipeline.find_faces(frame)
        assert len(sync.calls) == n and pipeline.label_lag == 0
