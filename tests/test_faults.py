"""Faults made to happen: a live source that drops and returns, slow releases,
truncated files."""
import time

import cv2
import numpy as np

from fer_server.config import Config


class FakeLive:
    """A live camera (no frame rate pacing, no end) whose availability a test switches.

    ``world["up"]`` False makes reads fail and opens fail, as an unplugged
    webcam or a dropped stream does; True brings it back.
    """

    def __init__(self, world):
        self.world = world
        self.opened = world["up"]
        world["opens"] += 1

    def isOpened(self):
        return self.opened

    def read(self):
        time.sleep(0.02)
        if not self.world["up"]:
            return False, None
        self.world["n"] += 1
        frame = np.full((120, 160, 3), self.world["n"] % 256, np.uint8)
        return True, frame

    def get(self, prop):
        return 0.0

    def set(self, prop, value):
        return True

    def release(self):
        time.sleep(self.world.get("release_s", 0))


def test_lost_source_reconnects_and_clients_keep_streaming(make_camera, pass_through):
    world = {"up": True, "opens": 0, "n": 0}
    camera = make_camera(0, pass_through, open_capture=lambda s: FakeLive(world), max_backoff_s=0.5)
    frames = camera.frames()
    for _ in range(5):
        next(frames)
    assert camera.state == "streaming"

    world["up"] = False  # unplugged
    deadline = time.monotonic() + 5
    while camera.state != "reconnecting" and time.monotonic() < deadline:
        next(frames)
    assert camera.state == "reconnecting"
    placeholder = next(frames)  # the client is still served: a "reconnecting" picture
    assert placeholder.faces == [] and placeholder.width == 160

    back = time.monotonic()
    world["up"] = True  # plugged in again
    while True:
        frame = next(frames)
        if camera.state == "streaming" and frame.timings:
            break
        assert time.monotonic() - back < 5, "the stream did not resume within 5 s"
    assert world["opens"] >= 2
    frames.close()
    assert camera.clients == 0


def test_client_arriving_while_the_thread_releases_gets_live_frames(make_camera, pass_through):
    world = {"up": True, "opens": 0, "n": 0, "release_s": 0.5}
    camera = make_camera(0, pass_through, open_capture=lambda s: FakeLive(world), idle_timeout_s=0.05)
    first = camera.frames()
    next(first)
    first.close()
    time.sleep(0.15)  # the thread is now idle and releasing the slow device
    late = camera.frames()
    got = [next(late).seq for _ in range(5)]
    late.close()
    assert got == sorted(set(got)) and len(got) == 5


def test_truncated_mp4_is_an_error_not_a_hang(make_camera, pass_through, clip, tmp_path):
    # The clip's index (the mp4 "moov" box) is written at its end: the first half holds no playable frame.
    cut = tmp_path / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    camera = make_camera(str(cut), pass_through, loop=False, pace=False)
    assert list(camera.frames()) == []
    assert camera.state == "error"
    again = make_camera(str(cut), pass_through, loop=True, pace=False)  # looping cannot help
    it = again.frames()
    assert next(it, None) is None
    assert again.state == "error" and not again.running
    it.close()


def mjpeg_avi(clip, path):
    """The clip re-encoded as Motion-JPEG AVI (header first, frames in file order); its frame count."""
    cap = cv2.VideoCapture(str(clip))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(frame)
        n += 1
    writer.release()
    cap.release()
    return n


def test_truncated_video_plays_what_it_has_then_ends(make_camera, pass_through, clip, tmp_path):
    avi, cut = tmp_path / "clip.avi", tmp_path / "cut.avi"
    assert mjpeg_avi(clip, avi) == 35
    data = avi.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # about half of the 35 similar-sized JPEG frames
    decoded = []  # every frame the capture thread publishes (a slow reader may skip some)
    camera = make_camera(str(cut), pass_through, loop=False, pace=False, on_frame=lambda f: decoded.append(f.seq))
    list(camera.frames())
    assert 12 <= len(decoded) <= 18, len(decoded)
    assert camera.state == "ended"
    assert decoded == list(range(1, len(decoded) + 1))
    looped_seqs = []
    looped = make_camera(str(cut), pass_through, loop=True, pace=False, on_frame=lambda f: looped_seqs.append(f.seq))
    it = looped.frames()
    while len(looped_seqs) < 2 * len(decoded) + 5:  # past the cut end, twice
        next(it)
    assert looped.state == "streaming" and looped.running
    it.close()


def test_healthz_states(make_camera, make_app, pass_through, clip):
    world = {"up": True, "opens": 0, "n": 0}
    camera = make_camera(0, pass_through, open_capture=lambda s: FakeLive(world), max_backoff_s=0.2)
    client = make_app(Config(health_max_frame_age_s=0.5), camera=camera).test_client()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json()["state"] == "idle"

    frames = camera.frames()
    next(frames)
    data = client.get("/healthz").get_json()
    assert data["state"] == "streaming" and data["clients"] == 1 and data["frames_processed"] >= 1
    assert data["seconds_since_last_frame"] < 0.5

    world["up"] = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        next(frames)  # placeholders keep coming while reconnecting
        r = client.get("/healthz")
        if r.status_code == 503:
            break
    assert r.status_code == 503 and r.get_json()["state"] == "reconnecting"
    world["up"] = True
    frames.close()

    ended = make_camera(str(clip), pass_through, loop=False, pace=False)
    list(ended.frames())
    r = make_app(Config(), camera=ended).test_client().get("/healthz")
    assert r.status_code == 200 and r.get_json()["state"] == "ended"
