"""The serve-only install: ``model.tflite`` on LiteRT, without TensorFlow (requirements-serve.txt).

The first tests run here, in the full install: the committed ``model.tflite``
against the committed Keras files, and every refusal of ``model.litert.load_tflite``.
The rest run the server with the serve-only venv's Python (``.venv-serve``,
or ``$FER_SERVE_PYTHON``), which ``.ci/run`` and the README's test command
build; where it is missing they are skipped with the command that builds it.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_server.config import Config
from fer_server.model.files import ModelLoadError
from fer_server.model.litert import METADATA_NAME, load_tflite, read_metadata, source_digest

ROOT = Path(__file__).resolve().parent.parent


def export_with_digest(keras_json, weights, out, digest_of=None):
    """``model.tflite`` for the Keras files, recording the digest of ``digest_of`` (default: the same files)."""
    from train.export_tflite import export, with_metadata

    export(keras_json, weights, out)
    if digest_of is not None:
        payload = json.dumps({"digest": source_digest(*digest_of)}).encode()
        out.write_bytes(with_metadata(out.read_bytes(), METADATA_NAME, payload))


def test_the_committed_tflite_was_written_from_the_committed_keras_files():
    entry = json.loads(read_metadata((ROOT / "model.tflite").read_bytes())[METADATA_NAME])
    assert entry["digest"] == source_digest(ROOT / "model.json", ROOT / "model_weights.h5"), \
        "model.tflite is stale: python -m train.export_tflite"
    assert entry["sources"] == ["model.json", "model_weights.h5"]


def test_the_committed_tflite_gives_the_int8_backends_answers(faces):
    """The file the serve-only install runs and the model the full install converts at start-up agree."""
    from fer_server.model.classifier import Classifier

    batch = np.stack([f for f in faces.values()])[..., None].astype(np.float32) / 255
    full = Classifier.from_files(ROOT / "model.json", backend="tflite-int8").predict(batch)
    interpreter, info = load_tflite(ROOT / "model.json")
    lite = Classifier(None, info, "tflite-int8", interpreter=interpreter).predict(batch)
    assert info.name == "fer_ensemble" and info.temperature == json.loads((ROOT / "model.json").read_text())[
        "temperature"]
    assert lite.argmax(1).tolist() == full.argmax(1).tolist()
    assert np.abs(lite - full).max() < 1e-4


def test_metadata_written_with_tensorflows_schema_reads_back_without_it(tmp_path, tiny_model_files):
    out = tmp_path / "tiny.tflite"
    export_with_digest(*tiny_model_files, out)
    entries = read_metadata(out.read_bytes())
    # the converter's own entries are kept beside ours
    assert {"min_runtime_version", METADATA_NAME} <= set(entries)
    entry = json.loads(entries[METADATA_NAME])
    assert entry["digest"] == source_digest(*tiny_model_files)
    assert entry["class_names"] == ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    assert entry["input_shape"] == [48, 48, 1]


def test_the_digest_ignores_json_layout_but_not_content(tmp_path, tiny_model_files):
    model_path, weights_path = tiny_model_files
    config = json.loads(model_path.read_text())
    respaced = tmp_path / "model.json"
    respaced.write_text(json.dumps(config, indent=4).replace("\n", "\r\n"))
    assert source_digest(respaced, weights_path) == source_digest(model_path, weights_path)
    config["temperature"] = 1.5
    respaced.write_text(json.dumps(config))
    assert source_digest(respaced, weights_path) != source_digest(model_path, weights_path)


@pytest.fixture
def tiny_copy(tmp_path, tiny_model_files):
    """The tiny model's files and a matching ``model.tflite`` in a folder of their own."""
    for path in tiny_model_files:
        shutil.copy(path, tmp_path / path.name)
    export_with_digest(tmp_path / "model.json", tmp_path / "model_weights.h5", tmp_path / "model.tflite")
    return tmp_path


def test_a_matching_tflite_loads_with_the_json_metadata(tiny_copy):
    config = json.loads((tiny_copy / "model.json").read_text())
    interpreter, info = load_tflite(tiny_copy / "model.json", class_names="a,b,c,d,e,f,g", input_range="-1,1")
    assert info.labels == tuple("abcdefg") and info.input_range == (-1.0, 1.0)
    assert info.input_shape == (48, 48, 1) and info.name == config["config"]["name"]
    assert [int(d) for d in interpreter.get_output_details()[0]["shape"]] == [1, 7]


def refusal(tiny_copy):
    with pytest.raises(ModelLoadError) as e:
        load_tflite(tiny_copy / "model.json")
    message = str(e.value)
    assert "\n" not in message and str(tiny_copy / "model.tflite") in message
    return message


def test_a_missing_tflite_is_refused_naming_both_fixes(tiny_copy):
    (tiny_copy / "model.tflite").unlink()
    message = refusal(tiny_copy)
    assert "missing" in message and "python -m train.export_tflite" in message and "requirements.txt" in message


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[:len(data) // 2], "truncated or damaged"),
    (lambda data: b"\x89PNG\r\n\x1a\n" + data[8:], "no TFL3 file identifier"),
    (lambda data: b"", "no TFL3 file identifier"),
])
def test_a_damaged_tflite_is_refused(tiny_copy, damage, reason):
    path = tiny_copy / "model.tflite"
    path.write_bytes(damage(path.read_bytes()))
    message = refusal(tiny_copy)
    assert "is not a TensorFlow Lite model" in message and reason in message
    assert "python -m train.export_tflite" in message


def test_a_stale_tflite_is_refused(tiny_copy):
    config = json.loads((tiny_copy / "model.json").read_text())
    config["temperature"] = 1.5  # only the JSON changed: the weights are the same
    (tiny_copy / "model.json").write_text(json.dumps(config))
    message = refusal(tiny_copy)
    assert "was not written from the current model.json + model_weights.h5" in message
    assert f"python -m train.export_tflite --model {tiny_copy / 'model.json'}" in message


def test_a_tflite_of_another_input_shape_or_class_count_is_refused(tiny_copy, tmp_path_factory):
    from fer_server.model.files import save_model
    from train.model import build_model

    other = tmp_path_factory.mktemp("other")
    save_model(build_model(7, width=4, input_size=40), other / "model.json", other / "model_weights.h5")
    keras_files = (tiny_copy / "model.json", tiny_copy / "model_weights.h5")
    # converted from the 40x40 model, but recording the 48x48 files' digest: only the shape check can tell
    export_with_digest(other / "model.json", other / "model_weights.h5", tiny_copy / "model.tflite", keras_files)
    message = refusal(tiny_copy)
    assert "takes inputs of shape (40, 40, 1)" in message and "declares (48, 48, 1)" in message

    save_model(build_model(5, width=4), other / "model.json", other / "model_weights.h5", labels="abcde")
    export_with_digest(other / "model.json", other / "model_weights.h5", tiny_copy / "model.tflite", keras_files)
    message = refusal(tiny_copy)
    assert "gives 5 class probabilities" in message and "names 7 classes" in message


def test_without_the_keras_model_explanations_answer_501_and_the_page_hides_the_toggle(
        clip, tiny_copy, make_app, faces):
    from fer_server.capture.camera import Camera
    from fer_server.builders import build_pipeline
    from fer_server.model.classifier import Classifier

    interpreter, info = load_tflite(tiny_copy / "model.json")
    lite = Classifier(None, info, "tflite-int8", interpreter=interpreter)
    assert not lite.can_explain
    config = Config(source=str(clip))
    client = make_app(config, camera=Camera(str(clip), build_pipeline(config, lite))).test_client()
    r = client.get("/api/faces?explain=1")
    assert r.status_code == 501
    assert "Grad-CAM" in r.get_json()["error"] and "pip install -r requirements.txt" in r.get_json()["error"]
    assert client.get("/api/faces").status_code == 200
    page = client.get("/").get_data(as_text=True)
    assert '<label class="dim" hidden><input type="checkbox" id="explain-toggle">' in page


# --- the serve-only venv --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def serve_python():
    """The serve-only venv's Python; the tests below are skipped without it."""
    python = Path(os.environ.get("FER_SERVE_PYTHON") or ROOT / ".venv-serve" / "bin" / "python")
    if not python.exists():
        pytest.skip(f"no serve-only venv at {python}: python3 -m venv .venv-serve && "
                    f".venv-serve/bin/pip install -r requirements-serve.txt")
    return str(python)


def run_serve(serve_python, *args, timeout=60):
    return subprocess.run([serve_python, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_the_serve_only_venv_has_neither_tensorflow_nor_keras(serve_python):
    done = run_serve(serve_python, "-c", "import importlib.util as u; "
                     "print([n for n in ('tensorflow', 'keras', 'h5py', 'ai_edge_litert') if u.find_spec(n)])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['ai_edge_litert']"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_only_server(serve_python, clip):
    """``main.py --source CLIP`` in the serve-only venv: its base URL."""
    port = free_port()
    process = subprocess.Popen([serve_python, "main.py", "--source", str(clip), "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the serve-only server did not answer /healthz in 30 s"
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(10)


def test_the_serve_only_server_streams_the_clip(serve_only_server):
    with urllib.request.urlopen(serve_only_server + "/video_feed", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        data = b""
        while data.count(b"\xff\xd9") < 3:
            data += r.read1(65536)
    start = data.index(b"\xff\xd8")
    frame = cv2.imdecode(np.frombuffer(data[start:data.index(b"\xff\xd9", start) + 2], np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (240, 320, 3)


def post_faces(url, faces):
    """Each fixture face, enlarged to 144 px, through ``POST /api/predict``: ``{name: face JSON}``."""
    found = {}
    for name, face in faces.items():
        body = cv2.imencode(".png", cv2.resize(face, (144, 144), interpolation=cv2.INTER_CUBIC))[1].tobytes()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=10) as r:
            found[name] = json.loads(r.read())["faces"]
    return found


def test_the_serve_only_server_predicts_what_the_full_install_predicts(serve_only_server, faces, make_app):
    lite = post_faces(serve_only_server + "/api/predict", faces)
    client = make_app(Config()).test_client()  # the full install, the same model files, in this process
    full = {}
    for name, face in faces.items():
        body = cv2.imencode(".png", cv2.resize(face, (144, 144), interpolation=cv2.INTER_CUBIC))[1].tobytes()
        full[name] = client.post("/api/predict", data=body, content_type="image/png").get_json()["faces"]
    assert sum(len(v) for v in full.values()) >= 5  # the cascade finds most of the seven faces
    for name in faces:
        assert [f["box"] for f in lite[name]] == [f["box"] for f in full[name]], name
        assert [f["label"] for f in lite[name]] == [f["label"] for f in full[name]], name
        for a, b in zip(lite[name], full[name]):
            assert all(abs(a["probabilities"][k] - b["probabilities"][k]) < 1e-3 for k in a["probabilities"])


def test_the_serve_only_server_answers_explanations_with_501(serve_only_server):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(serve_only_server + "/api/faces?explain=1", timeout=10)
    assert e.value.code == 501
    assert "requirements.txt" in json.loads(e.value.read())["error"]


def test_the_serve_only_install_refuses_a_stale_tflite_at_start_up(serve_python, tiny_copy, clip):
    config = json.loads((tiny_copy / "model.json").read_text())
    config["temperature"] = 2.0
    (tiny_copy / "model.json").write_text(json.dumps(config))
    done = run_serve(serve_python, "main.py", "--source", str(clip), "--model", str(tiny_copy / "model.json"),
                     "--port", str(free_port()))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "python -m train.export_tflite" in lines[-1], done.stderr


@pytest.mark.parametrize("argv", [
    ["-m", "train.evaluate", "--data", "fer2013.csv"],
    ["-m", "train.export_tflite"],
    ["main.py", "--backend", "tf.function", "--source", "CLIP"],
])
def test_what_needs_tensorflow_says_so_in_one_sentence(serve_python, clip, argv):
    done = run_serve(serve_python, *[str(clip) if a == "CLIP" else a for a in argv])
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "requirements.txt" in last, done.stderr
    assert "Traceback" not in done.stderr


def test_the_serve_only_install_batch_analyses_a_folder_as_the_full_install_does(serve_python, clip, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "clip.mp4")
    outputs = {}
    for name, python in (("serve", serve_python), ("full", sys.executable)):
        done = subprocess.run([python, "main.py", "--source", str(videos), "--csv-dir", str(tmp_path / name),
                               "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[name] = (tmp_path / name / "clip.csv").read_text()
    assert len(outputs["serve"].splitlines()) > 30  # a row per face per frame of the 35-frame clip
    assert outputs["serve"] == outputs["full"]
