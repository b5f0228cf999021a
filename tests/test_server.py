"""``server.py``: the live streams from uvicorn's event loop, everything else through Flask.

Each test runs the real server (uvicorn on a free 127.0.0.1 port, in a
thread) and talks to it over sockets, as a browser would.
"""
import json
import socket
import time

import cv2
import numpy as np

from fer_server.config import Config


def request(port, path, method="GET", body=b"", headers=""):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
                 .encode() + body)
    return sock


def read_until(sock, marker, count=1, limit=5_000_000):
    """Bytes read until ``marker`` was seen ``count`` times (or the server closed)."""
    received = b""
    while received.count(marker) < count and len(received) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def open_stream(serve, camera, path, marker, count):
    """GET ``path`` from a server of ``camera``: (socket, lower-cased head, body so far)."""
    port, _ = serve(Config(), camera)
    sock = request(port, path)
    head, _, body = read_until(sock, marker, count).partition(b"\r\n\r\n")
    return sock, head.lower(), body


def wait_for(condition, timeout_s=3.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_video_feed_streams_jpeg_parts_and_frees_the_slot(serve, make_camera, pass_through, clip):
    camera = make_camera(str(clip), pass_through)
    sock, head, body = open_stream(serve, camera, "/video_feed", b"--frame\r\n", count=3)
    assert head.startswith(b"http/1.1 200")
    assert b"content-type: multipart/x-mixed-replace; boundary=frame" in head
    assert b"cache-control: no-store" in head
    part = body.split(b"--frame\r\n")[1]
    assert b"Content-Type: image/jpeg" in part and b"\r\n\r\n\xff\xd8" in part  # a JPEG starts FF D8
    assert camera.clients == 1
    sock.close()  # gone mid-stream: the slot is freed at the next frame
    assert wait_for(lambda: camera.clients == 0)


def test_events_stream_the_faces(serve, make_camera, clip, tiny_model_files):
    from fer_server.builders import build_pipeline

    model_path, weights_path = tiny_model_files
    pipeline = build_pipeline(Config(model_path=model_path, weights_path=weights_path))
    camera = make_camera(str(clip), pipeline)
    sock, head, body = open_stream(serve, camera, "/api/events", b"\n\n", count=4)
    assert b"content-type: text/event-stream" in head
    assert b"retry: 2000\n\n" in body
    events = [json.loads(part.split(b"\n\n")[0]) for part in body.split(b"data: ")[1:3]]
    assert len(events) == 2
    for event in events:
        assert event["source"] == clip.name and event["frame"] >= 1
        # the clip shows one face, enlarged to 110 px or more, in each 320x240 frame
        assert len(event["faces"]) == 1, event
        face = event["faces"][0]
        x, y, w, h = face["box"]
        assert 0 <= x and 0 <= y and x + w <= 320 and y + h <= 240 and w >= 70 and h >= 70
        assert face["label"] in ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
        assert len(face["probabilities"]) == 7
    assert events[1]["frame"] > events[0]["frame"]
    sock.close()
    assert wait_for(lambda: camera.clients == 0)


def test_events_of_a_face_free_pipeline_are_empty(serve, make_camera, pass_through, clip):
    camera = make_camera(str(clip), pass_through)
    sock, _, body = open_stream(serve, camera, "/api/events", b"\n\n", count=3)
    event = json.loads(body.split(b"data: ", 1)[1].split(b"\n\n")[0])
    assert event["faces"] == [] and event["source"] == clip.name
    sock.close()
    assert wait_for(lambda: camera.clients == 0)


def test_viewers_beyond_max_clients_get_503(serve, make_camera, pass_through, clip):
    camera = make_camera(str(clip), pass_through)
    port, _ = serve(Config(max_clients=1), camera)
    first = request(port, "/video_feed")
    read_until(first, b"--frame\r\n")
    refused = read_until(request(port, "/api/events"), b"}")
    assert refused.startswith(b"HTTP/1.1 503") and b"retry-after: 10" in refused.lower()
    assert b"limit of 1 viewers" in refused
    first.close()
    assert wait_for(lambda: camera.clients == 0)
    assert read_until(request(port, "/video_feed"), b"--frame\r\n").startswith(b"HTTP/1.1 200")


def test_other_requests_go_to_flask(serve, clip, tiny_model_files):
    model_path, weights_path = tiny_model_files
    port, _ = serve(Config(source=str(clip), model_path=model_path, weights_path=weights_path), None)
    health = read_until(request(port, "/healthz"), b"}")
    assert health.startswith(b"HTTP/1.1 200") and b'"source":"' + clip.name.encode() in health
    upload = read_until(request(port, "/api/predict", "POST", b"not an image",
                                "Content-Type: image/jpeg\r\n"), b"}")
    assert upload.startswith(b"HTTP/1.1 400") and b'"error":"the data is not an image' in upload
    wrong_method = read_until(request(port, "/video_feed", "POST"), b"\r\n\r\n")
    assert wrong_method.startswith(b"HTTP/1.1 405")  # only GET is a stream; Flask answers the rest
    head = read_until(request(port, "/video_feed", "HEAD"), b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"multipart/x-mixed-replace" in head


def test_stream_ends_with_the_video(serve, make_camera, pass_through, clip):
    camera = make_camera(str(clip), pass_through, loop=False)  # paced: 3.5 s, so the viewer sees several frames
    port, _ = serve(Config(), camera)
    received = read_until(request(port, "/video_feed"), b"\r\n0\r\n\r\n")  # the last chunk
    assert received.endswith(b"\r\n0\r\n\r\n")
    assert received.count(b"--frame\r\n") >= 2
    assert wait_for(lambda: camera.clients == 0)


def test_shutdown_ends_open_streams(serve, make_camera, pass_through, clip):
    camera = make_camera(str(clip), pass_through)
    port, asgi = serve(Config(), camera)
    sock = request(port, "/video_feed")
    read_until(sock, b"--frame\r\n")
    asgi.streams.shutdown()  # what Ctrl-C does before uvicorn stops
    assert read_until(sock, b"0\r\n\r\n").endswith(b"0\r\n\r\n")  # the last chunk
    assert wait_for(lambda: camera.clients == 0)


def test_a_viewer_that_stops_reading_does_not_hold_up_the_others(serve, make_camera, pass_through, clip):
    camera = make_camera(str(clip), pass_through, pace=False)  # as fast as the CPU allows
    port, _ = serve(Config(), camera)
    stalled = request(port, "/video_feed")  # never read: its socket buffers fill up
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = request(port, "/video_feed")
    assert read_until(reader, b"--frame\r\n", count=200).count(b"--frame\r\n") >= 200
    assert camera.clients == 2
    stalled.close()
    reader.close()
    assert wait_for(lambda: camera.clients == 0)


def test_a_connection_without_a_request_is_closed(serve, make_camera, pass_through, clip):
    port, _ = serve(Config(request_timeout_s=1.0), make_camera(str(clip), pass_through))
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    trickling = socket.create_connection(("127.0.0.1", port), timeout=10)
    trickling.sendall(b"GET /healthz HTTP/1.1\r\nHost:")  # a request that never ends
    started = time.monotonic()
    assert silent.recv(1) == b"" and trickling.recv(1) == b""  # both closed by the server
    assert time.monotonic() - started < 5
    assert read_until(request(port, "/healthz"), b"}").startswith(b"HTTP/1.1 200")


def test_stream_of_the_model_server_gives_decodable_frames_and_faces(serve, clip, tiny_model_files):
    """Through the whole server with a model: a JPEG part of the clip's size, then an event with its face."""
    model_path, weights_path = tiny_model_files
    port, _ = serve(Config(source=str(clip), model_path=model_path, weights_path=weights_path), None)
    bad = read_until(request(port, "/api/predict", "POST", b"junk", "Content-Type: image/jpeg\r\n"), b"}")
    assert bad.startswith(b"HTTP/1.1 400")  # a bad upload first: the streams are not affected
    sock = request(port, "/video_feed")
    body = read_until(sock, b"--frame\r\n", count=2).partition(b"\r\n\r\n")[2]
    sock.close()
    head, _, rest = body.split(b"--frame\r\n")[1].partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    image = cv2.imdecode(np.frombuffer(rest[:length], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3) and rest[length:length + 2] == b"\r\n"
    events = request(port, "/api/events")
    text = read_until(events, b"\n\n", count=4).decode()
    events.close()
    event = json.loads(text.split("data: ", 1)[1].split("\n\n")[0])
    assert event["width"] == 320 and event["source"] == clip.name
    # the fixture clip shows one face in every frame, and the cascade finds it
    assert len(event["faces"]) == 1 and len(event["faces"][0]["probabilities"]) == 7
