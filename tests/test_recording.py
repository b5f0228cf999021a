"""``recording.Recorder`` (``--record DIR``): rows, hourly files, flushing, a full disk, ``/api/history``."""
import csv
import datetime
import logging
import time
from pathlib import Path

from fer_server.capture.camera import Frame
from fer_server.config import Config
from fer_server.vision.frames import Face
from fer_server.face_csv import CSV_COLUMNS
from fer_server.capture import recording
from fer_server.capture.recording import Recorder

LABELS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")


def face(face_id, happy):
    probabilities = dict.fromkeys(LABELS, (1 - happy) / 6)
    probabilities["Happy"] = happy
    return Face((10 * face_id, 20, 30, 40), "Happy", happy, probabilities, face_id)


def frame(seq, faces, placeholder=False):
    return Frame(seq, b"", b"", faces, 320, 240, {}, placeholder)


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_rows_go_to_one_file_per_hour_with_a_header_each(tmp_path):
    start = datetime.datetime(2026, 11, 29, 22, 59, 59, 500000, tzinfo=datetime.timezone.utc).timestamp()
    clock = Clock(start)
    recorder = Recorder(tmp_path, "door", LABELS, flush_s=60, clock=clock)  # flushed by hand here
    recorder.observe_frame(frame(1, [face(1, 0.5), face(2, 0.9)]))
    recorder.observe_frame(frame(2, []))  # no face: no row
    recorder.observe_frame(frame(3, [face(1, 0.7)], placeholder=True))  # not a frame of the source
    clock.now = start + 1.0  # 23:00:00.5: the next hour
    recorder.observe_frame(frame(4, [face(1, 0.25)]))
    recorder.close()
    first, second = tmp_path / "door" / "2026-11-29T22.csv", tmp_path / "door" / "2026-11-29T23.csv"
    assert sorted(p.name for p in (tmp_path / "door").iterdir()) == [first.name, second.name]
    header = ["wall_time", *CSV_COLUMNS, *(name.lower() for name in LABELS)]
    rows = read_rows(first)
    assert rows[0] == header and len(rows) == 3
    assert rows[1][:4] == ["2026-11-29T22:59:59.500+00:00", "1", rows[1][2], "1"]
    assert rows[2][3:5] == ["2", "20"]  # face id 2, its box x = 20
    assert float(rows[2][header.index("happy")]) == 0.9 and rows[2][header.index("label")] == "Happy"
    assert abs(float(rows[2][header.index("sad")]) - round(0.1 / 6, 4)) < 1e-9
    rows = read_rows(second)
    assert rows[0] == header and len(rows) == 2 and rows[1][:2] == ["2026-11-29T23:00:00.500+00:00", "4"]
    assert recorder.rows_written == 3


def test_rows_reach_the_file_within_a_second_without_closing(tmp_path):
    recorder = Recorder(tmp_path, "cam0", LABELS)  # the default flush interval: one second
    try:
        recorder.observe_frame(frame(7, [face(3, 0.6)]))
        path = recording.hour_file(tmp_path / "cam0", recorder.clock())
        deadline = time.monotonic() + 1.5  # due within the second, with half a second for a busy machine
        while time.monotonic() < deadline and not (path.exists() and len(read_rows(path)) == 2):
            time.sleep(0.01)
        assert read_rows(path)[1][1] == "7"  # on disk while the recorder still runs
    finally:
        recorder.close()


def test_a_full_disk_is_logged_and_recording_goes_on(tmp_path, monkeypatch, caplog):
    recorder = Recorder(tmp_path, "cam0", LABELS, flush_s=60)
    monkeypatch.setattr(recording, "hour_file", lambda folder, t: Path("/dev/full"))  # writes fail: ENOSPC
    recorder.observe_frame(frame(1, [face(1, 0.5)]))
    with caplog.at_level(logging.ERROR, logger="recording"):
        recorder.flush()
        recorder.observe_frame(frame(2, [face(1, 0.5), face(2, 0.5)]))
        recorder.flush()  # fails again within the minute: counted, not logged again
    assert recorder.write_errors == 2 and len(caplog.records) == 1
    assert "No space left on device" in caplog.text and "1 rows lost so far" in caplog.text
    assert recorder.last_error == "cannot write /dev/full: No space left on device"
    monkeypatch.setattr(recording, "hour_file", lambda folder, t: tmp_path / "after.csv")  # space again
    recorder.observe_frame(frame(3, [face(1, 0.5)]))
    recorder.close()
    assert [row[1] for row in read_rows(tmp_path / "after.csv")[1:]] == ["3"]
    assert recorder.last_error is None  # a write succeeded since
    assert len(recorder.recent(60)) == 4  # the history kept every row


def test_recent_keeps_only_the_asked_seconds(tmp_path):
    now = [1000.0]
    recorder = Recorder(tmp_path, "cam0", LABELS, flush_s=60, history_s=100, monotonic=lambda: now[0])
    for seq in range(1, 5):
        recorder.observe_frame(frame(seq, [face(1, 0.5)]))
        now[0] += 30.0  # frames at 1000, 1030, 1060, 1090; asked at 1120
    assert [row["frame"] for row in recorder.recent(60)] == [3, 4]
    assert [row["frame"] for row in recorder.recent(1e9)] == [2, 3, 4]  # older than history_s: dropped
    assert recorder.recent(60)[0]["happy"] == 0.5 and recorder.recent(60)[0]["x"] == 10
    recorder.close()


def test_api_history_and_the_file_match_the_frames_seen(make_app, clip, tiny_model_files, tmp_path):
    model_path, weights_path = tiny_model_files
    app = make_app(Config(source=f"door={clip}", model_path=model_path, weights_path=weights_path,
                          record=tmp_path, loop=False))
    camera = app.extensions["camera"]
    seen = []  # every published frame with a face; a viewer of camera.frames() may skip one when it lags
    camera.add_frame_observer(lambda frame: frame.faces and seen.append(frame.seq))
    for _ in camera.frames():  # the whole clip once (loop=False), paced at 10 fps
        pass
    assert len(seen) >= 30
    client = app.test_client()
    answer = client.get("/api/history?source=door&seconds=60").json
    assert answer["source"] == "door" and answer["columns"][:3] == ["wall_time", "frame", "time_s"]
    assert [row["frame"] for row in answer["rows"]] == seen  # one face a frame: none missing, none twice
    assert client.get("/api/history?seconds=60").json["rows"] == answer["rows"]  # the first source
    assert client.get("/api/history?seconds=x").status_code == 400
    app.extensions["cameras"].close()
    files = list((tmp_path / "door").glob("*.csv"))
    assert [int(row[1]) for path in sorted(files) for row in read_rows(path)[1:]] == seen


def test_api_history_without_record_says_how(make_app, make_camera, pass_through, clip):
    client = make_app(Config(), camera=make_camera(str(clip), pass_through)).test_client()
    answer = client.get("/api/history")
    assert answer.status_code == 404 and "--record DIR" in answer.json["error"]


def test_recorded_sources_record_every_frame_with_no_viewer(serve, tiny_model_files, clip, tmp_path):
    """Two recorded sources and no page open: each plays its whole clip (35 frames, loop off) and every
    face of every frame becomes a row; /healthz says so per source."""
    import json

    from tests.test_server import read_until, request, wait_for

    model_path, weights_path = tiny_model_files
    config = Config(source=(f"a={clip}", f"b={clip}"), model_path=model_path, weights_path=weights_path,
                    record=tmp_path, loop=False)
    port, asgi = serve(config, None)
    health = lambda: json.loads(read_until(request(port, "/healthz"), b"}}}}").partition(b"\r\n\r\n")[2])
    assert wait_for(lambda: all(s["state"] == "ended" for s in health()["sources"].values()), timeout_s=20)
    time.sleep(1.5)  # the recorder flushes every second: the last rows are in the files after this
    body = health()
    for name in ("a", "b"):
        source = body["sources"][name]
        assert source["clients"] == 0 and source["frames_processed"] == 35  # the whole clip, unwatched
        rows = [row for path in (tmp_path / name).glob("*.csv") for row in read_rows(path)[1:]]
        frames = {int(row[1]) for row in rows}
        assert len(frames) >= 0.8 * 35, (name, len(frames))
        assert source["recording"] == {"rows_written": len(rows), "write_errors": 0, "last_error": None}
