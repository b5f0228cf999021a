"""Shared fixtures: the bundled clip and faces, a tiny untrained model, the real server."""
import os
import socket
import threading
import time
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def tflite_cache(tmp_path_factory):
    """Converted models go to a temporary folder, not the user's ~/.cache (servers started by tests inherit it)."""
    folder = tmp_path_factory.mktemp("tflite-cache")
    previous = os.environ.get("FER_SERVER_CACHE")
    os.environ["FER_SERVER_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("FER_SERVER_CACHE", None)
    else:
        os.environ["FER_SERVER_CACHE"] = previous


@pytest.fixture(scope="session")
def clip():
    """A 320x240, 10 fps, 35-frame clip of one FER2013 face at a time (demo/make_demo_clip.py)."""
    return FIXTURES / "clip.mp4"


@pytest.fixture(scope="session")
def faces():
    """``{class name: (48, 48) uint8}``, one PublicTest face per FER2013 class."""
    return {p.stem.capitalize(): cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            for p in sorted((FIXTURES / "faces").glob("*.png"))}


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """``(model.json, model_weights.h5)`` of an untrained width-4 network, the same one on every run (seed 0)."""
    import keras

    from fer_server.model.files import save_model
    from train.model import build_model

    keras.utils.set_random_seed(0)  # the tests that read its outputs (Grad-CAM maps, ...) see the same weights each run
    folder = tmp_path_factory.mktemp("tiny")
    model_path, weights_path = folder / "model.json", folder / "model_weights.h5"
    save_model(build_model(7, width=4), model_path, weights_path)
    return model_path, weights_path


@pytest.fixture(scope="session")
def classifier(tiny_model_files):
    from fer_server.model.classifier import Classifier

    return Classifier.from_files(*tiny_model_files)


class PassThrough:
    """A pipeline stand-in that finds no face: camera tests need no model."""

    def process(self, frame):
        return frame, []


class CountingCapture:
    """``cv2.VideoCapture`` that counts how many captures were opened."""

    def __init__(self):
        self.opened = 0

    def __call__(self, source):
        self.opened += 1
        return cv2.VideoCapture(source)


@pytest.fixture
def make_camera():
    """``camera.Camera`` factory whose cameras are closed (threads joined) after the test."""
    from fer_server.capture.camera import Camera

    cameras = []

    def make(*args, **kwargs):
        cameras.append(Camera(*args, **kwargs))
        return cameras[-1]

    yield make
    for camera in cameras:
        camera.close()


@pytest.fixture
def make_app():
    """``app.create_app`` whose camera is closed after the test."""
    from fer_server.web.app import create_app

    apps = []

    def make(*args, **kwargs):
        apps.append(create_app(*args, **kwargs))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["cameras"].close()


@pytest.fixture
def pass_through():
    return PassThrough()


@pytest.fixture
def counting_capture():
    return CountingCapture()


@pytest.fixture
def serve(make_app):
    """``serve(config, camera, **uvicorn_options)`` -> (port, the ASGI app): ``server.create_asgi_app``
    served by uvicorn on a free 127.0.0.1 port, in a thread, as ``python main.py`` serves it."""
    from fer_server.web.server import connection_limit, create_asgi_app, make_server

    servers = []

    def start(config, camera, **options):
        app = make_app(config, camera=camera)
        asgi = create_asgi_app(app, app.extensions["cameras"], config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        cameras = app.extensions["cameras"]
        options.setdefault("limit_concurrency", connection_limit(config, len(cameras.names)))  # as in production
        server = make_server(asgi, config.request_timeout_s, lifespan="off", log_level="warning", **options)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return sock.getsockname()[1], asgi

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(5)
