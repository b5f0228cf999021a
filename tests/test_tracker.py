from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_server.config import Config
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


# --- the spread full-frame search -------------------------------------------------------------------

class SpyDetector(FaceDetector):
    """A ``FaceDetector`` that records every band searched and every whole-frame search."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bands_searched, self.full_searches = [], 0

    def band_hits(self, small, band):
        self.bands_searched.append(band)
        return super().band_hits(small, band)

    def detect(self, gray, min_px=None, max_px=None, scale=None, min_neighbors=None):
        if min_px is None and max_px is None:
            self.full_searches += 1
        return super().detect(gray, min_px, max_px, scale, min_neighbors)


def test_linear_partition_minimises_the_dearest_group():
    from fer_server.vision.detector import _linear_partition

    # worked by hand: no split of [5 1 1 1 1 1] into 3 beats a dearest group of 5 (5 is one element)
    groups = _linear_partition([5, 1, 1, 1, 1, 1], 3)
    assert groups[0] == (0, 1) and groups[-1][1] == 6 and all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert max(sum([5, 1, 1, 1, 1, 1][a:b]) for a, b in groups) == 5
    # [1 2 | 3 | 4]: the best 3-split of 1..4 has dearest 4 (e.g. [1 2 | 3 | 4])
    assert _linear_partition([1, 2, 3, 4], 3) == [(0, 2), (2, 3), (3, 4)]
    assert _linear_partition([2, 2, 2, 2], 2) == [(0, 2), (2, 4)]


def test_the_bands_cover_the_pyramid_once_each_within_the_cost_bound():
    detector = FaceDetector(scale_factor=1.15, min_face_px=40, detect_width=320)
    for shape, k in (((528, 720), 10), ((480, 640), 10), ((240, 320), 3), ((1080, 1920), 6), ((240, 320), 40)):
        levels = detector.pyramid(shape)
        sides = [side for side, _ in levels]
        bands = detector.bands(shape, k)
        assert len(bands) == k
        covered = sorted(side for band in bands if band for side in sides if band[0] <= side <= band[1])
        assert covered == sides  # every level in exactly one band
        cost = {side: c for side, c in levels}
        dearest = max(sum(cost[s] for s in sides if b[0] <= s <= b[1]) for b in bands if b)
        assert dearest <= max(max(cost.values()), sum(cost.values()) / k) * 2 + 1e-9
        if len(sides) >= k:
            assert None not in bands
    # the pyramid replays OpenCV's loop: 320 px wide at scale 1, min face 40 -> the first window side >= 40
    assert detector.pyramid((240, 320))[0][0] == round(24 * 1.15 ** 4) == 42


def test_the_hits_of_every_band_grouped_are_the_full_search(clip):
    # On one frame, the union of the bands' raw hits, grouped, is exactly detectMultiScale's answer.
    detector = FaceDetector(scale_factor=1.15, min_face_px=40, detect_width=320)
    megamind = cv2.resize(cv2.imread(str(Path(__file__).parent / "fixtures" / "faces" / "happy.png"),
                                     cv2.IMREAD_GRAYSCALE), (200, 200))
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in read_frames(clip)[::5]]
    big = np.full((480, 640), 120, np.uint8)
    big[100:300, 300:500] = megamind
    found = 0
    for gray in frames + [big]:
        bands = [b for b in detector.bands(gray.shape, 10) if b]
        hits = np.concatenate([detector.band_hits(detector.shrink(gray), b) for b in bands])
        grouped = detector.group_hits(hits, hits, gray.shape)
        full = detector.detect(gray)
        assert sorted(map(tuple, grouped.tolist())) == sorted(map(tuple, full.tolist()))
        found += len(full)
    assert found >= len(frames)  # the frames do hold faces: the comparison is not of two empty lists


def test_no_frame_searches_more_than_one_band_and_k_frames_search_them_all(clip):
    k = 5
    spy = SpyDetector()
    tracker = FaceTracker(spy, detect_every=k)
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in read_frames(clip)]
    tracker.update(frames[0])
    bands = set(b for b in spy.bands(frames[0].shape, k) if b)
    assert set(spy.bands_searched) == bands and len(spy.bands_searched) == len(bands)  # the first frame: all
    assert spy.full_searches == 0
    for start in range(1, 1 + 3 * k, k):
        spy.bands_searched = []
        for frame in frames[start:start + k]:
            before = len(spy.bands_searched)
            tracker.update(frame)
            assert len(spy.bands_searched) - before <= 1
        assert set(spy.bands_searched) == bands  # any k frames in a row search every band
    assert spy.full_searches == 0


@pytest.mark.parametrize("k, server_thresholds", [(4, False), (10, False), (10, True)])
def test_a_face_pasted_in_at_frame_n_is_boxed_by_frame_n_plus_k(faces, k, server_thresholds):
    a, b = faces["Happy"], faces["Surprise"]
    # the server's still and cut thresholds: a face entering is neither unchanged nor a cut
    thresholds = dict(still_threshold=Config.still_threshold, cut_threshold=Config.cut_threshold) \
        if server_thresholds else {}
    for entry in range(1, k + 2):  # every phase of the band cycle
        tracker = FaceTracker(FaceDetector(), detect_every=k, **thresholds)
        found = None
        for n in range(entry + 2 * k):
            frame = canvas_with([a, b], [(20, 60), (260, 60)]) if n >= entry else canvas_with([a], [(20, 60)])
            tracks = tracker.update(frame)
            assert not tracker.last_cut
            if found is None and any(t.box[0] > 200 for t in tracks):
                found = n
        assert found is not None and found - entry < k, (entry, found)
        x, y, w, h = next(t.box for t in tracker.tracks if t.box[0] > 200)
        assert abs(x + w / 2 - 315) <= 10 and abs(y + h / 2 - 115) <= 10  # on the pasted face (centre 315, 115)


def test_an_unchanged_frame_skips_the_band_search_and_a_changed_one_does_not(faces):
    k = 4
    spy = SpyDetector()
    tracker = FaceTracker(spy, detect_every=k, still_threshold=2.0)
    still = canvas_with([faces["Happy"]], [(20, 60)])
    tracker.update(still)  # the first frame searches every band
    searched = len(spy.bands_searched)
    assert searched == sum(b is not None for b in spy.bands(still.shape, k))
    for _ in range(2 * k):
        tracker.update(still)
        assert tracker.last_skipped and len(spy.bands_searched) == searched
    assert len(tracker.tracks) == 1  # the followed face stays
    changed = canvas_with([faces["Happy"], faces["Surprise"]], [(20, 60), (260, 60)])
    tracker.update(changed)
    assert not tracker.last_skipped and len(spy.bands_searched) == searched + 1
    for _ in range(k):
        tracker.update(changed)
    assert len(tracker.tracks) == 2
    # a noise-free copy of the same picture (every cell within 2 grey levels) counts as unchanged
    nudged = np.clip(changed.astype(int) + 1, 0, 255).astype(np.uint8)
    searched = len(spy.bands_searched)
    for _ in range(k):
        tracker.update(nudged)
    assert len(spy.bands_searched) == searched


def test_a_cut_drops_the_last_scenes_faces_and_searches_every_band_on_its_frame(faces):
    k = 10
    scene_a = canvas_with([faces["Happy"]], [(20, 60)])
    scene_b = canvas_with([faces["Surprise"]], [(260, 60)])
    scene_b[:, :200] = 40  # another room: the left half dark (mean thumbnail difference about 65 grey levels)
    spy = SpyDetector()
    tracker = FaceTracker(spy, detect_every=k, still_threshold=2.0, cut_threshold=10.0)
    for _ in range(3):
        tracker.update(scene_a)
        assert not tracker.last_cut
    assert [t.box[0] < 200 for t in tracker.tracks] == [True]
    old_id = tracker.tracks[0].id
    searched = len(spy.bands_searched)
    tracks = tracker.update(scene_b)
    assert tracker.last_cut
    assert len(spy.bands_searched) - searched == sum(b is not None for b in spy.bands(scene_b.shape, k))
    assert len(tracks) == 1 and tracks[0].id != old_id  # boxed on the cut frame itself, the old face gone
    x, y, w, h = tracks[0].box
    assert abs(x + w / 2 - 315) <= 10 and abs(y + h / 2 - 115) <= 10
    tracker.update(scene_b)
    assert not tracker.last_cut  # the next frame of the new scene is no cut

    # without cuts, the old face's box stays on the new scene's first frame (kept for max_missed frames)
    tracker = FaceTracker(FaceDetector(), detect_every=k, still_threshold=2.0, cut_threshold=0.0)
    for _ in range(3):
        tracker.update(scene_a)
    tracks = tracker.update(scene_b)
    assert not tracker.last_cut and any(t.box[0] < 200 and t.missed == 1 for t in tracks)


def test_without_a_threshold_every_band_is_searched_in_its_turn(faces):
    spy = SpyDetector()
    tracker = FaceTracker(spy, detect_every=4, still_threshold=0.0)
    still = canvas_with([faces["Happy"]], [(20, 60)])
    tracker.update(still)
    first = len(spy.bands_searched)
    for _ in range(8):
        tracker.update(still)
    assert len(spy.bands_searched) == first + 8 and not tracker.last_skipped


def test_classify_every_classifies_each_face_once_in_n_frames_and_reuses_its_probabilities(clip):
    class Counting(ScriptedClassifier):
        calls = 0

        def predict(self, crops):
            Counting.calls += len(crops)
            return super().predict(crops)

    # the n-th classifier call returns the n-th row: which frame's row a face shows tells when it was classified
    classifier = Counting(np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]])
    pipeline = FramePipeline(FaceDetector(), classifier, detect_every=3, smoothing=0.0, classify_every=3)
    shown = []
    for frame in read_frames(clip)[:9]:
        faces = pipeline.find_faces(frame)
        assert len(faces) == 1  # the clip shows one face on each of these frames
        shown.append(faces[0].label)
    track_id = faces[0].id
    # classified on its first frame, then on the frames where (frame + id) % 3 == 0
    classified = [0] + [n for n in range(1, 9) if (n + track_id) % 3 == 0]
    assert Counting.calls == len(classified)
    expected, row = [], -1
    for n in range(9):
        row += n in classified
        expected.append("ABC"[row % 3])
    assert shown == expected
    with pytest.raises(ValueError):
        FramePipeline(FaceDetector(), classifier, classify_every=0)
