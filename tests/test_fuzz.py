"""Generated bad input (Hypothesis): never a 500 or a traceback, always a clear 4xx or ValueError."""
import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fer_server.config import Config
from fer_server.vision.detector import FaceDetector
from fer_server.vision.pipeline import FramePipeline
from test_api import png_header_only

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def api(clip, tiny_model_files):
    from fer_server.web.app import create_app

    app = create_app(Config(source=str(clip), model_path=tiny_model_files[0],
                            weights_path=tiny_model_files[1], max_upload_bytes=256 * 1024,
                            max_image_pixels=4_000_000))
    yield app.test_client()
    app.extensions["camera"].close()


@pytest.fixture(scope="module")
def valid_images(faces):
    image = cv2.resize(faces["Happy"], (160, 160))
    return [cv2.imencode(ext, image)[1].tobytes() for ext in (".jpg", ".png", ".bmp")]


def check_answer(response):
    assert response.status_code < 500
    data = response.get_json()
    if response.status_code == 200:
        assert isinstance(data["faces"], list) and data["width"] > 0
    else:
        assert 400 <= response.status_code < 500 and data["error"]


@FUZZ
@given(body=st.binary(max_size=4096),
       content_type=st.sampled_from(["image/jpeg", "image/png", "application/octet-stream", "text/plain"]))
def test_random_bytes(api, body, content_type):
    check_answer(api.post("/api/predict", data=body, content_type=content_type))


@FUZZ
@given(which=st.integers(0, 2), cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                                                    max_size=8))
def test_truncated_and_corrupted_images(api, valid_images, which, cut, flips):
    data = bytearray(valid_images[which][: max(1, int(len(valid_images[which]) * cut))])
    for position, value in flips:
        data[int(position * (len(data) - 1))] = value
    check_answer(api.post("/api/predict", data=bytes(data), content_type="image/png"))


@FUZZ
@given(width=st.integers(0, 100_000), height=st.integers(0, 100_000))
def test_declared_sizes(api, width, height):
    check_answer(api.post("/api/predict", data=png_header_only(width, height), content_type="image/png"))


@pytest.fixture(scope="module")
def pipeline(classifier):
    return FramePipeline(FaceDetector(), classifier)


dtypes = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_])
shapes = st.one_of(st.tuples(st.integers(0, 64), st.integers(0, 64)),
                   st.tuples(st.integers(0, 64), st.integers(0, 64), st.integers(0, 5)),
                   st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)))


@FUZZ
@given(frame=dtypes.flatmap(lambda dtype: arrays(dtype, shapes)))
def test_pipeline_takes_any_array_or_says_why(pipeline, frame):
    try:
        annotated, faces = pipeline.process(frame)
    except ValueError as e:
        assert "expected" in str(e)
    else:
        assert annotated.dtype == np.uint8 and annotated.ndim == 3 and annotated.shape[2] == 3
        assert annotated.shape[:2] == frame.shape[:2]
