import pytest

from fer_server import cli
from fer_server.model.files import FER2013_LABELS
from fer_server.config import Config


@pytest.fixture
def app_config(clip, tiny_model_files):
    model_path, weights_path = tiny_model_files
    return Config(source=str(clip), model_path=model_path, weights_path=weights_path)


@pytest.fixture
def client(app_config, make_app):
    return make_app(app_config).test_client()


def test_index_page_names_the_source(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "clip.mp4" in page and 'src="/video_feed"' in page


def test_api_faces_after_a_frame(app_config, make_app):
    app = make_app(app_config)
    camera = app.extensions["camera"]
    frames = camera.frames()
    next(frames)
    data = app.test_client().get("/api/faces").get_json()
    frames.close()
    assert data["width"] == 320 and data["height"] == 240 and data["source"] == "clip.mp4"
    assert len(data["faces"]) == 1
    face = data["faces"][0]
    assert face["label"] in FER2013_LABELS and len(face["box"]) == 4
    assert abs(sum(face["probabilities"].values()) - 1) < 1e-3


def test_page_shows_the_webcam_notice(clip, pass_through, make_camera, make_app):
    camera = make_camera(str(clip), pass_through, notice="No webcam could be opened at index 0.")
    page = make_app(camera=camera).test_client().get("/").get_data(as_text=True)
    assert "No webcam could be opened at index 0." in page


def test_main_missing_source_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["--source", str(tmp_path / "missing.mp4")]) == 2
    err = capsys.readouterr().err
    assert "error: video file" in err and "missing.mp4 does not exist" in err


def test_main_wrong_weights_is_a_clear_error(tmp_path, clip, tiny_model_files, capsys):
    model_path, _ = tiny_model_files
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"junk")
    assert cli.main(["--source", str(clip), "--model", str(model_path), "--weights", str(junk)]) == 2
    assert "junk.h5" in capsys.readouterr().err


def test_main_help(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--help"])
    assert exit.value.code == 0
    assert "--no-loop" in capsys.readouterr().out
