"""The package: what the wheel holds, a cheap import, and the library front door."""
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_server.config import Config

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_only_the_package_with_its_shipped_files(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(tmp_path)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = tmp_path.glob("fer_server-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"fer_server"}
    for shipped in ("model.json", "model_weights.h5", "model.tflite", "templates/index.html", "demo/demo.mp4"):
        assert f"fer_server/data/{shipped}" in names
        member = zipfile.ZipFile(wheel).getinfo(f"fer_server/data/{shipped}")
        assert member.file_size == (ROOT / shipped).stat().st_size
    for sub in ("capture", "vision", "model", "web", "offline"):
        assert f"fer_server/{sub}/__init__.py" in names
    assert not any(name.startswith(("fer_server/train", "fer_server/bench", "train/", "bench/")) for name in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "fer-server = fer_server.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

    # installed (not editable) and run from another folder, it finds its shipped files inside itself
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import fer_server.config as c\n"
            "k = c.Config()\n"
            "print(c.ROOT.relative_to(c.PACKAGE), k.model_path.is_file(), k.weights_path.is_file(),\n"
            "      k.demo_clip.is_file(), (c.ROOT / 'templates' / 'index.html').is_file())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["data", "True", "True", "True", "True"]


def test_importing_the_package_and_its_config_leaves_tensorflow_out():
    code = "import sys, fer_server, fer_server.config; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_main_py_refuses_a_missing_video_without_importing_tensorflow(tmp_path):
    code = ("import runpy, sys\n"
            f"sys.argv = ['main.py', '--source', {str(tmp_path / 'missing.mp4')!r}]\n"
            "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
            "except SystemExit as e:\n    print('exit', e.code, 'tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["exit", "2", "False"]
    assert "missing.mp4 does not exist" in out.stderr


@pytest.fixture(scope="module")
def recognizer(tiny_model_files):
    import fer_server

    return fer_server.Recognizer(*tiny_model_files)


def photo(faces):
    """A JPEG-free BGR photo: the Happy and Surprise fixture faces, enlarged to 150 px, on grey."""
    canvas = np.full((250, 420), 170, np.uint8)
    for i, name in enumerate(("Happy", "Surprise")):
        canvas[50:200, 60 + i * 210:210 + i * 210] = cv2.resize(faces[name], (150, 150), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)


def in_box_order(result):
    return dict(result, faces=sorted(result["faces"], key=lambda face: face["box"]))


def test_a_path_bytes_and_an_array_get_the_answer_of_the_api(recognizer, faces, tiny_model_files, clip,
                                                             make_app, tmp_path):
    image = photo(faces)
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), image)
    data = path.read_bytes()
    client = make_app(Config(source=str(clip), model_path=tiny_model_files[0],
                             weights_path=tiny_model_files[1])).test_client()
    api = client.post("/api/predict", data=data, content_type="image/png").get_json()
    assert len(api["faces"]) >= 2 and (api["width"], api["height"]) == (420, 250)
    # OpenCV's threads may return the boxes in another order while the app's camera runs: compare sorted
    expected = in_box_order(api)
    for same in (path, str(path), data, image):
        assert in_box_order(recognizer.analyze(same)) == expected
    assert in_box_order(recognizer.analyze(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)))["faces"] == expected["faces"]


def test_bad_input_raises_the_documented_error(recognizer, tmp_path):
    from fer_server import FerError

    (tmp_path / "not-an-image.png").write_bytes(b"this is text")
    cases = [(tmp_path / "absent.jpg", "does not exist"), (b"\x89PNG not really", "not an image"),
             (tmp_path / "not-an-image.png", "not an image"), (np.zeros((4, 4, 2), np.uint8), "(4, 4, 2)"),
             (np.zeros((0, 5), np.uint8), "shape"), (3.5, "float"), (np.array(["a"]), "shape")]
    for value, words in cases:
        with pytest.raises(FerError) as info:
            recognizer.analyze(value)
        assert words in str(info.value), (value, str(info.value))
        assert "\n" not in str(info.value)
    with pytest.raises(FerError, match="does not exist"):
        next(recognizer.analyze_video(tmp_path / "absent.mp4"))


def test_analyze_video_gives_every_frame_with_tracked_ids(recognizer, clip):
    frames = list(recognizer.analyze_video(clip))
    cap = cv2.VideoCapture(str(clip))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert [f["frame"] for f in frames] == list(range(total)) == list(range(35))
    assert frames[10]["time_s"] == 1.0  # a 10 fps clip
    with_faces = [f for f in frames if f["faces"]]
    assert len(with_faces) >= 30
    assert all(isinstance(face["id"], int) and face["id"] >= 1 for f in with_faces for face in f["faces"])
    assert all(set(face) == {"id", "box", "label", "confidence", "probabilities"}
               for f in with_faces for face in f["faces"])
