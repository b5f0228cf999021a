import threading
import time

import cv2
import numpy as np
import pytest

from fer_server.capture.mjpeg import mjpeg_part
from fer_server.capture.sources import SourceError, parse_source, resolve_source


class Closed:
    """A capture that never opens, like cv2.VideoCapture(0) on a machine without a webcam."""

    def isOpened(self):
        return False

    def release(self):
        pass


def take(camera, n):
    frames = []
    for frame in camera.frames():
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


def test_simultaneous_readers_share_one_capture(make_camera, clip, pass_through, counting_capture):
    camera = make_camera(str(clip), pass_through, open_capture=counting_capture, idle_timeout_s=0.5)
    results = [None] * 5
    start = threading.Barrier(5)

    def reader(i):
        start.wait()
        results[i] = take(camera, 8)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert counting_capture.opened == 1
    for frames in results:
        assert len(frames) == 8
        assert [f.seq for f in frames] == sorted({f.seq for f in frames})  # each new frame once
    # the frame objects (and so their JPEG bytes) are shared, not re-encoded per client: whoever reads a
    # frame gets the one object, and most frames were read by several readers
    objects = {}
    for frames in results:
        for f in frames:
            objects.setdefault(f.seq, set()).add(id(f))
    assert all(len(ids) == 1 for ids in objects.values())
    readers = {seq: sum(seq in {f.seq for f in frames} for frames in results) for seq in objects}
    assert sum(n >= 2 for n in readers.values()) >= 6
    assert camera.clients == 0


class SlowPassThrough:
    """Finds no face and takes ``seconds`` per frame: frames come no faster than that."""

    def __init__(self, seconds):
        self.seconds = seconds

    def process(self, frame):
        time.sleep(self.seconds)
        return frame, []


def test_every_waiting_reader_wakes_for_every_frame(make_camera, clip):
    # the clients are woken one after another (camera._Wakeup); none may miss a frame.  A frame every
    # 0.3 s leaves each of the 20 threads that long to come back and wait, even on a loaded CI machine.
    camera = make_camera(str(clip), SlowPassThrough(0.3))
    results = [None] * 20
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, take(camera, 6)))
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    for frames in results:
        seqs = [f.seq for f in frames]
        assert seqs[1:] == list(range(seqs[1], seqs[1] + 5))  # after the first, no gaps


def test_listener_and_viewer_poll_see_every_frame_once(make_camera, clip, pass_through):
    # the event-loop server's way: a listener per frame, a Viewer polled without blocking
    camera = make_camera(str(clip), pass_through, loop=False, pace=False)
    calls = threading.Semaphore(0)
    camera.add_listener(calls.release)
    viewer = camera.connect()
    assert camera.clients == 1
    seqs, ended = [], False
    while not ended:
        assert calls.acquire(timeout=5)  # called at each frame and at the end of the run
        while True:
            frame, ended = viewer.poll()
            if frame is None:
                break
            seqs.append(frame.seq)
    assert seqs == sorted(set(seqs)) and seqs[-1] == 35  # none twice; the last frame of the clip
    assert viewer.poll(repeat=True) == (None, True)
    viewer.close()
    viewer.close()  # idempotent
    assert camera.clients == 0


def test_thread_releases_after_last_client_and_restarts(make_camera, clip, pass_through, counting_capture):
    camera = make_camera(str(clip), pass_through, open_capture=counting_capture, idle_timeout_s=0.2)
    take(camera, 2)
    deadline = time.monotonic() + 5
    while camera.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not camera.running
    take(camera, 2)
    assert counting_capture.opened == 2


def test_video_file_is_paced_at_its_frame_rate(make_camera, clip, pass_through):
    camera = make_camera(str(clip), pass_through)
    started = time.monotonic()
    take(camera, 11)  # 10 intervals of 0.1 s at the clip's 10 fps
    assert 0.9 <= time.monotonic() - started <= 1.5  # half speed (2 s) or unpaced (~0 s) fails


def test_no_loop_ends_the_stream_and_loop_replays(make_camera, clip, pass_through):
    frames = list(make_camera(str(clip), pass_through, loop=False).frames())
    assert len(frames) == 35
    assert len(take(make_camera(str(clip), pass_through, loop=True), 40)) == 40


def test_frames_are_jpeg_parts(make_camera, clip, pass_through):
    frame = take(make_camera(str(clip), pass_through), 1)[0]
    image = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3) == (frame.height, frame.width, 3)
    assert frame.part == mjpeg_part(frame.jpeg)
    assert frame.part == (b"--frame\r\nContent-Type: image/jpeg\r\nX-Frame-Kind: frame\r\n"
                          + f"Content-Length: {len(frame.jpeg)}\r\n\r\n".encode() + frame.jpeg + b"\r\n")
    assert not frame.placeholder


class CountingPipeline:
    """A pipeline stand-in counting the frames drawn (``process``) and those only analysed (``find_faces``)."""

    def __init__(self):
        self.drawn = self.analysed = 0

    def process(self, frame):
        self.drawn += 1
        return frame, []

    def find_faces(self, frame):
        self.analysed += 1
        return []


def test_without_viewers_frames_are_analysed_but_neither_drawn_nor_encoded(make_camera, clip, monkeypatch):
    encoded = []
    real_imencode = cv2.imencode
    monkeypatch.setattr(cv2, "imencode", lambda *a, **k: encoded.append(1) or real_imencode(*a, **k))
    pipeline = CountingPipeline()
    observed = []
    camera = make_camera(str(clip), pipeline, pace=False, on_frame=observed.append)
    camera.keep_running()  # as for a recorded source: frames flow with nobody watching
    deadline = time.monotonic() + 10
    while len(observed) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert pipeline.drawn == 0 and pipeline.analysed >= 10 and encoded == []
    assert all(f.jpeg is None and f.part is None and "encode" not in f.timings for f in observed)
    watched = take(camera, 3)  # a viewer: the next frames are drawn and encoded
    assert all(f.jpeg is not None and f.part == mjpeg_part(f.jpeg) for f in watched)
    assert pipeline.drawn >= 3 and len(encoded) >= 3


def test_unopenable_file_ends_the_stream_with_an_error(make_camera, pass_through, tmp_path):
    camera = make_camera(str(tmp_path / "gone.mp4"), pass_through, open_capture=lambda s: Closed())
    assert list(camera.frames()) == []
    assert "cannot open" in camera.error and camera.state == "error"


def test_open_that_raises_does_not_wedge_the_camera(make_camera, pass_through, clip):
    calls = []

    def flaky(source):
        calls.append(source)
        if len(calls) == 1:
            raise RuntimeError("backend exploded")
        return cv2.VideoCapture(source)

    camera = make_camera(str(clip), pass_through, open_capture=flaky)
    assert list(camera.frames()) == []  # the first run fails at once...
    assert len(take(camera, 3)) == 3  # ...and the next client starts a working one


def test_failing_pipeline_does_not_kill_the_camera(make_camera, clip):
    class Broken:
        def process(self, frame):
            raise ValueError("boom")

    camera = make_camera(str(clip), Broken())
    assert list(camera.frames()) == []
    assert "failed" in camera.error
    assert not camera.running


def no_webcam(source):
    return Closed() if isinstance(source, int) else cv2.VideoCapture(source)


def test_webcam_absent_falls_back_to_demo_clip(clip):
    source, notice = resolve_source("0", clip, open_capture=no_webcam)
    assert source == str(clip)
    assert "No webcam" in notice and "demo clip" in notice


def test_resolve_source_kinds(clip, tmp_path):
    assert resolve_source(str(clip), clip) == (str(clip), None)
    assert resolve_source("demo", clip) == (str(clip), None)
    assert resolve_source("rtsp://cam.local/stream", clip) == ("rtsp://cam.local/stream", None)
    assert parse_source("1") == 1 and parse_source("video.mp4") == "video.mp4"
    with pytest.raises(SourceError, match="missing.mp4 does not exist"):
        resolve_source(str(tmp_path / "missing.mp4"), clip)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match="junk.mp4 cannot be decoded"):
        resolve_source(str(junk), clip)
