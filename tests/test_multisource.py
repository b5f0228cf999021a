"""Several sources at once (issue #18): names, flags, routes, health, and two clips served together."""
import argparse
import json

import cv2
import numpy as np
import pytest

from fer_server import cli
from fer_server.capture.camera_set import Cameras, SourceNameError, parse_source_specs
from fer_server.config import Config, add_config_arguments, config_from_args
from tests.test_server import read_until, request


def parse(argv, environ=None):
    p = argparse.ArgumentParser()
    add_config_arguments(p, environ=environ or {})
    return config_from_args(p.parse_args(argv))


def test_names_default_to_their_position_and_urls_keep_their_equals_sign():
    assert parse_source_specs(["a.mp4", "door=rtsp://h/x?a=b", "0"]) == [
        ("cam0", "a.mp4"), ("door", "rtsp://h/x?a=b"), ("cam2", "0")]
    assert parse_source_specs(["rtsp://h/x?a=b"]) == [("cam0", "rtsp://h/x?a=b")]
    with pytest.raises(SourceNameError, match="two sources are named 'a'"):
        parse_source_specs(["a=x.mp4", "a=y.mp4"])
    with pytest.raises(SourceNameError, match="'my cam' is not URL-safe"):
        parse_source_specs(["my cam=x.mp4"])
    with pytest.raises(SourceNameError, match="two sources are named 'cam1'"):
        parse_source_specs(["cam1=x.mp4", "y.mp4"])  # the bare second source is cam1 too


def test_source_flag_repeats_and_the_variable_takes_a_list():
    assert parse([]).source == "0"
    assert parse(["--source", "a.mp4"]).source == "a.mp4"
    assert parse(["--source", "a=x.mp4", "--source", "b=y.mp4"]).source == ("a=x.mp4", "b=y.mp4")
    assert parse([], {"FER_SERVER_SOURCE": "x.mp4, y.mp4"}).source == ("x.mp4", "y.mp4")
    assert parse(["--source", "z.mp4"], {"FER_SERVER_SOURCE": "x.mp4,y.mp4"}).source == "z.mp4"


def test_bad_sources_stop_the_server_at_start_up(clip, tmp_path, capsys):
    assert cli.main(["--source", f"a={clip}", "--source", f"a={clip}", "--port", "0"]) == 2
    assert "two sources are named 'a'" in capsys.readouterr().err
    assert cli.main(["--source", f"a b={clip}", "--port", "0"]) == 2
    assert "not URL-safe" in capsys.readouterr().err
    assert cli.main(["--source", f"a={clip}", "--source", str(tmp_path / "gone.mp4"), "--port", "0"]) == 2
    assert "gone.mp4 does not exist" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["--source", str(clip), "--record", str(blocker), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write recordings to {blocker}")


def make_clip(path, face, size, corner, frames=30):
    """A 10 fps MJPG clip of ``face`` (48x48 uint8) scaled to 110 px at ``corner`` on a grey frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    frame = np.full((size[1], size[0], 3), 170, np.uint8)
    x, y = corner
    frame[y:y + 110, x:x + 110] = cv2.cvtColor(cv2.resize(face, (110, 110), interpolation=cv2.INTER_CUBIC),
                                              cv2.COLOR_GRAY2BGR)
    for _ in range(frames):
        writer.write(frame)
    writer.release()
    return path


def first_event(port, query):
    sock = request(port, "/api/events" + query)
    text = read_until(sock, b"\n\n", count=3).decode()
    sock.close()
    return json.loads(text.split("data: ", 1)[1].split("\n\n")[0])


def first_jpeg_shape(port, path):
    sock = request(port, path)
    body = read_until(sock, b"--frame\r\n", count=2).partition(b"\r\n\r\n")[2]
    sock.close()
    head, _, rest = body.split(b"--frame\r\n")[1].partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return cv2.imdecode(np.frombuffer(rest[:length], np.uint8), cv2.IMREAD_COLOR).shape


def test_two_clips_are_served_at_once_each_with_its_own_faces(serve, tiny_model_files, faces, tmp_path):
    left = make_clip(tmp_path / "left.avi", faces["Happy"], (320, 240), (20, 60))
    right = make_clip(tmp_path / "right.avi", faces["Surprise"], (400, 300), (250, 150))
    model_path, weights_path = tiny_model_files
    config = Config(source=(f"left={left}", f"right={right}"), model_path=model_path, weights_path=weights_path)
    port, asgi = serve(config, None)
    assert set(asgi.all_streams) == {"left", "right"}
    assert first_jpeg_shape(port, "/video_feed/left") == (240, 320, 3)
    assert first_jpeg_shape(port, "/video_feed/right") == (300, 400, 3)
    assert first_jpeg_shape(port, "/video_feed") == (240, 320, 3)  # the first source, as before
    a, b = first_event(port, "?source=left"), first_event(port, "?source=right")
    assert (a["name"], a["source"], a["width"]) == ("left", "left.avi", 320)
    assert (b["name"], b["source"], b["width"]) == ("right", "right.avi", 400)
    # each finds the face where its clip has it (boxes within a few pixels of the pasted square)
    assert len(a["faces"]) == 1 and len(b["faces"]) == 1
    ax, ay = a["faces"][0]["box"][:2]
    bx, by = b["faces"][0]["box"][:2]
    assert abs(ax - 20) < 25 and abs(ay - 60) < 25 and abs(bx - 250) < 25 and abs(by - 150) < 25
    health = read_until(request(port, "/healthz"), b"}}}")
    body = json.loads(health.partition(b"\r\n\r\n")[2])
    assert health.startswith(b"HTTP/1.1 200") and set(body["sources"]) == {"left", "right"}
    assert body["source"] == "left.avi" and body["sources"]["right"]["source"] == "right.avi"


def test_an_unknown_source_gets_404_json(serve, make_camera, pass_through, clip):
    port, _ = serve(Config(), make_camera(str(clip), pass_through))
    for path in ("/video_feed/nope", "/api/events?source=nope", "/api/faces?source=nope",
                 "/api/history?source=nope"):
        answer = read_until(request(port, path), b"}")
        assert answer.startswith(b"HTTP/1.1 404"), path
        assert b'"error":' in answer and b"no source named 'nope'; sources: cam0" in answer, path


def test_healthz_is_503_only_when_every_source_stalls(make_app, make_camera, pass_through, clip):
    first, second = make_camera(str(clip), pass_through), make_camera(str(clip), pass_through)
    client = make_app(Config(), camera=Cameras({"a": first, "b": second})).test_client()
    first.state, second.state = "error", "streaming"
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json["sources"]["a"]["stalled"] is True and response.json["sources"]["b"]["stalled"] is False
    second.state = "error"
    assert client.get("/healthz").status_code == 503


def test_max_clients_applies_to_each_source(serve, make_camera, pass_through, clip):
    """40 viewers of each of two sources are served at once (80 connections: more than one source's 40 + the
    API's 32, the old server-wide cap); the 41st viewer of a source gets the 503 JSON, the API still answers."""
    from tests.test_server import wait_for

    cameras = Cameras({"a": make_camera(str(clip), pass_through), "b": make_camera(str(clip), pass_through)})
    port, _ = serve(Config(max_clients=40), cameras)
    viewers = []
    try:
        for name in ("a", "b"):
            for _ in range(40):
                viewers.append(request(port, f"/video_feed/{name}"))
                assert read_until(viewers[-1], b"\r\n\r\n").startswith(b"HTTP/1.1 200"), (name, len(viewers))
        assert wait_for(lambda: cameras.get("a").clients == 40 and cameras.get("b").clients == 40)
        refused = read_until(request(port, "/video_feed/b"), b"}")
        assert refused.startswith(b"HTTP/1.1 503") and b"limit of 40 viewers" in refused
        assert read_until(request(port, "/healthz"), b"}}}").startswith(b"HTTP/1.1 200")
    finally:
        for sock in viewers:
            sock.close()


def test_search_threads_are_one_with_several_sources_unless_set():
    from fer_server.builders import search_threads

    assert search_threads(Config(), 1) is None  # one source: OpenCV's own, one thread per core
    assert search_threads(Config(), 2) == 1 and search_threads(Config(), 8) == 1
    assert search_threads(Config(search_threads=2), 8) == 2 and search_threads(Config(search_threads=3), 1) == 3


def test_closing_the_cameras_closes_their_background_classifier(make_camera, pass_through, clip):
    class Background:
        closed = False

        def close(self):
            self.closed = True

    background = Background()
    Cameras({"a": make_camera(clip, pass_through)}, background=background).close()
    assert background.closed
