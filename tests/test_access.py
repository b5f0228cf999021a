"""Safe to expose: the access token, https, ``/metrics``, refusals every client reads, marked parts.

Each test runs the real server (uvicorn on a free 127.0.0.1 port, in a thread).
"""
import http.client
import json
import re
import ssl
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_faults import FakeLive
from test_server import read_until, request, wait_for

from fer_server import cli
from fer_server.config import Config

TOKEN = "s3cret-token_for.tests"
ROUTES = [("GET", "/"), ("GET", "/video_feed"), ("GET", "/api/events"), ("GET", "/api/faces"),
          ("POST", "/api/predict"), ("GET", "/metrics"), ("GET", "/nothing"), ("GET", "/video_feed/cam0"),
          ("GET", "/api/events?source=cam0"), ("GET", "/api/faces?source=cam0&explain=1"),
          ("GET", "/api/history?source=cam0"), ("POST", "/api/predict?explain=1")]


@pytest.fixture
def model_config(clip, tiny_model_files):
    model_path, weights_path = tiny_model_files
    return Config(source=str(clip), model_path=model_path, weights_path=weights_path, token=TOKEN)


def status_of(port, method, path, headers=""):
    sock = request(port, method=method, path=path, headers=headers)
    head = read_until(sock, b"\r\n\r\n")
    sock.close()
    return int(head.split(b" ", 2)[1]), head


def test_every_route_but_healthz_needs_the_token(serve, model_config):
    port, _ = serve(model_config, None)
    assert status_of(port, "GET", "/healthz")[0] == 200
    for method, path in ROUTES:
        status, head = status_of(port, method, path)
        assert status == 401, path
        assert b"www-authenticate: bearer" in head.lower()
        assert status_of(port, method, path, "Authorization: Bearer wrong-token-123\r\n")[0] == 401, path
        status, _ = status_of(port, method, path, f"Authorization: Bearer {TOKEN}\r\n")
        assert status == {"/api/predict": 415, "/api/predict?explain=1": 415, "/nothing": 404,
                          "/api/history?source=cam0": 404}.get(path, 200), path  # (no --record here)
    unauthorised = read_until(request(port, "/api/faces"), b"}")
    assert b'"error": "this server needs its access token' in unauthorised
    assert b'"faces"' not in unauthorised  # no face data without the token


def test_the_browser_gets_a_cookie_that_opens_the_streams(serve, model_config):
    port, _ = serve(model_config, None)
    status, head = status_of(port, "GET", f"/?token={TOKEN}")
    assert status == 200
    cookie = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"set-cookie:")).decode()
    assert f"fer_server_token={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain http here
    with_cookie = f"Cookie: other=1; fer_server_token={TOKEN}\r\n"
    sock = request(port, "/video_feed", headers=with_cookie)
    assert read_until(sock, b"--frame\r\n").startswith(b"HTTP/1.1 200")
    sock.close()
    assert status_of(port, "GET", "/api/faces", "Cookie: fer_server_token=not-it-at-all\r\n")[0] == 401
    assert status_of(port, "GET", "/?token=wrong-token-123")[0] == 401


def test_https_with_a_certificate_made_here(serve, model_config, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    port, _ = serve(model_config, None, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.request("GET", f"/?token={TOKEN}")
    response = conn.getresponse()
    assert response.status == 200 and "Secure" in response.getheader("Set-Cookie")
    response.read()
    conn.close()
    with pytest.raises(ssl.SSLError):  # a client that does not trust the CA refuses the server
        http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(),
                                    timeout=10).request("GET", "/healthz")


def test_metrics_parse_and_count(serve, model_config):
    port, asgi = serve(model_config, None)
    sock = request(port, "/video_feed", headers=f"Authorization: Bearer {TOKEN}\r\n")
    read_until(sock, b"--frame\r\n", count=4)
    sock.close()
    status_of(port, "GET", "/healthz")
    status_of(port, "GET", "/api/faces")  # 401
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = conn.getresponse().read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("fer_frames_processed_total", ())] >= 3
    assert samples[("fer_source_state", (("state", "streaming"),))] == 1.0
    assert samples[("fer_source_state", (("state", "error"),))] == 0.0
    assert samples[("fer_http_requests_total", (("route", "/healthz"), ("status", "200")))] == 1.0
    assert samples[("fer_http_requests_total", (("route", "/api/faces"), ("status", "401")))] == 1.0
    assert samples[("fer_stage_seconds_count", (("stage", "classify"),))] >= 3
    # the fixture clip has one face in every frame, and the cascade finds it
    assert samples[("fer_faces_per_frame_sum", ())] >= 3
    # a face new to the stream is classified on its own frame (lag 0); the others in the background
    assert samples[("fer_label_lag_frames_bucket", (("le", "0.0"),))] >= 1
    assert samples[("fer_label_lag_frames_count", ())] >= 3
    assert ("fer_background_faces_classified_total", ()) in samples


@pytest.mark.parametrize("megabytes", [12, 60])
def test_an_oversized_upload_gets_its_413_through_urllib(serve, model_config, megabytes):
    """urllib sends the whole body before it reads the answer."""
    port, _ = serve(model_config, None)
    body = b"\xff" * (megabytes * 1024 * 1024)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", data=body, method="POST",
                                 headers={"Content-Type": "image/jpeg", "Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["error"] == "upload larger than the limit of 10,485,760 bytes"


def test_other_early_refusals_reach_urllib_too(serve, model_config):
    port, _ = serve(model_config, None)
    body = b"x" * (8 * 1024 * 1024)  # under the limit, but the wrong content type
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", data=body, method="POST",
                                 headers={"Content-Type": "text/plain", "Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 415
    unauthorised = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", data=body, method="POST",
                                          headers={"Content-Type": "image/jpeg"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unauthorised, timeout=30)
    assert refused.value.code == 401


def test_placeholder_and_keepalive_parts_are_marked(serve, make_camera, pass_through):
    world = {"up": True, "opens": 0, "n": 0}
    # reopening waits 0.25, 0.5, 1 s...: keep-alives (every 0.3 s without news) come between placeholders
    camera = make_camera(0, pass_through, open_capture=lambda s: FakeLive(world), max_backoff_s=2.0)
    port, asgi = serve(Config(), camera)
    asgi.streams.keepalive_s = 0.3
    sock = request(port, "/video_feed")
    head = read_until(sock, b"X-Frame-Kind: frame")
    assert b"X-Frame-Kind: placeholder" not in head
    world["up"] = False  # the camera goes: placeholders, and keep-alives between them
    # reopen attempts 0.25, 0.5, then 1 s apart: the third gap is three keep-alive intervals long
    gone = read_until(sock, b"X-Frame-Kind: placeholder", count=4)  # not closed first
    kinds = [kind.decode() for kind in re.findall(rb"X-Frame-Kind: (\w+)", gone)]
    third, fourth = [i for i, kind in enumerate(kinds) if kind == "placeholder"][2:4]
    assert "keepalive" in kinds[third + 1:fourth], kinds
    world["up"] = True
    assert b"X-Frame-Kind: frame" in read_until(sock, b"X-Frame-Kind: frame")
    sock.close()
    assert wait_for(lambda: camera.clients == 0)


def test_the_token_is_decided_at_start_up():
    assert cli.resolve_token(Config(host="127.0.0.1")).token is None
    made = cli.resolve_token(Config(host="0.0.0.0")).token
    assert made and cli.TOKEN_PATTERN.match(made) and len(made) >= 32
    assert made != cli.resolve_token(Config(host="0.0.0.0")).token
    assert cli.resolve_token(Config(host="0.0.0.0", no_token=True)).token is None
    assert cli.resolve_token(Config(host="::1")).token is None
    assert cli.server_url(Config(host="0.0.0.0", port=8443, token="abcdefgh1", certfile="c.pem")) == \
        "https://0.0.0.0:8443/?token=abcdefgh1"
    with pytest.raises(ValueError, match="8 or more"):
        cli.resolve_token(Config(token="a b;c"))
    with pytest.raises(ValueError, match="contradict"):
        cli.resolve_token(Config(token="abcdefgh1", no_token=True))
