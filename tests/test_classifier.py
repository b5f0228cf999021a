import json

import h5py
import numpy as np
import pytest

from fer_server.model.classifier import Classifier
from fer_server.model.files import FER2013_LABELS, load_model, save_model, ModelLoadError
from fer_server.config import Config
from train.model import build_model


def test_shipped_model_loads_and_classifies_fixture_faces(faces):
    config = Config()
    classifier = Classifier.from_files(config.model_path, config.weights_path)
    assert classifier.labels == FER2013_LABELS
    batch = np.stack([f for f in faces.values()])[..., None].astype(np.float32) / 255
    probs = classifier.predict(batch)
    assert probs.shape == (7, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    predicted = dict(zip(faces, (FER2013_LABELS[i] for i in probs.argmax(1))))
    # The shipped pair reads these five of the seven fixture faces right (it reads the Happy face, a
    # closed-mouth smile, as Neutral, and the Sad face as Angry). A model that answers one class for
    # every face, as an untrained one does, gets one right.
    right = {name for name, label in predicted.items() if label == name}
    assert right >= {"Angry", "Disgust", "Fear", "Neutral", "Surprise"}


def test_shipped_weights_are_in_classic_hdf5_layout():
    with h5py.File(Config().weights_path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        assert "keras_version" in f.attrs and "backend" in f.attrs
        assert "model_weights" not in f  # a weights file, not a whole saved model
        first_conv = next(name for name in names if "conv" in name)
        conv = f[first_conv]
        weight_names = [n.decode() if isinstance(n, bytes) else n for n in conv.attrs["weight_names"]]
        assert weight_names and all(f"{first_conv}/" in n for n in weight_names)
        assert conv[weight_names[0]].dtype == np.float32


def test_save_load_round_trip_keeps_outputs_and_labels(tmp_path, faces):
    model = build_model(4, width=4)
    model.layers[2].moving_mean.assign(np.linspace(0, 1, 4))  # not all-default weights
    labels = ("Angry", "Happy", "Sad", "Neutral")
    save_model(model, tmp_path / "m.json", tmp_path / "w.h5", labels)
    loaded, info = load_model(tmp_path / "m.json", tmp_path / "w.h5")
    assert info.labels == labels and info.input_shape == (48, 48, 1)
    assert info.input_range == (0.0, 1.0) and info.temperature == 1.0
    x = np.stack(list(faces.values()))[..., None].astype(np.float32) / 255
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    assert json.loads((tmp_path / "m.json").read_text())["class_names"] == list(labels)


def test_compiled_classifier_matches_keras_model(classifier, faces):
    x = np.stack(list(faces.values()))[..., None].astype(np.float32) / 255
    np.testing.assert_allclose(classifier.predict(x), classifier.model(x).numpy(), atol=1e-5)
    assert classifier.predict(x[:0]).shape == (0, 7)


def test_mismatched_weights_name_the_file(tmp_path, tiny_model_files):
    model_path, _ = tiny_model_files
    other = tmp_path / "other_weights.h5"
    save_model(build_model(7, width=8), tmp_path / "other.json", other)
    with pytest.raises(ModelLoadError, match="other_weights.h5.*does not match"):
        load_model(model_path, other)


def test_missing_and_corrupt_files_name_the_file(tmp_path, tiny_model_files):
    model_path, weights_path = tiny_model_files
    with pytest.raises(ModelLoadError, match="nope.h5"):
        load_model(model_path, tmp_path / "nope.h5")
    with pytest.raises(ModelLoadError, match="nope.json"):
        load_model(tmp_path / "nope.json", weights_path)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ModelLoadError, match="bad.json.*not a Keras JSON"):
        load_model(bad_json, weights_path)
    bad_h5 = tmp_path / "bad.h5"
    bad_h5.write_bytes(b"\x89HDF\r\n garbage")
    with pytest.raises(ModelLoadError, match="bad.h5"):
        load_model(model_path, bad_h5)


@pytest.mark.parametrize("backend", Classifier.BACKENDS)
def test_every_backend_matches_keras_on_shipped_model(faces, backend):
    config = Config()
    classifier = Classifier.from_files(config.model_path, config.weights_path, backend=backend)
    assert classifier.backend == backend
    x = np.stack(list(faces.values()))[..., None].astype(np.float32) / 255
    raw = classifier.model(x, training=False).numpy()
    # the shipped model.json carries a softmax temperature: softmax(log(p) / T), worked out here
    tempered = np.exp(np.log(raw) / classifier.temperature)
    expected = tempered / tempered.sum(1, keepdims=True)
    for batch in (x[:1], x[:2], x):  # batch size changes resize the interpreter
        got = classifier.predict(batch)
        # int8 weights move the probabilities a little, never the label
        np.testing.assert_allclose(got, expected[:len(batch)], atol=0.05 if backend == "tflite-int8" else 1e-5)
        assert (got.argmax(1) == expected[:len(batch)].argmax(1)).all()


def test_converted_models_are_cached_and_a_damaged_cache_is_replaced(tiny_model_files, faces, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_SERVER_CACHE", str(tmp_path))
    x = np.stack(list(faces.values()))[..., None].astype(np.float32) / 255
    fresh = Classifier.from_files(*tiny_model_files, backend="tflite-int8")
    cached_files = list(tmp_path.glob("*.tflite"))
    assert len(cached_files) == 1 and cached_files[0].stat().st_size > 1000
    again = Classifier.from_files(*tiny_model_files, backend="tflite-int8")  # read from the cache
    np.testing.assert_array_equal(again.predict(x), fresh.predict(x))
    assert len(list(tmp_path.glob("*.tflite"))) == 1
    Classifier.from_files(*tiny_model_files, backend="tflite")  # float32 is another file
    assert len(list(tmp_path.glob("*.tflite"))) == 2
    cached_files[0].write_bytes(b"not a flatbuffer")
    repaired = Classifier.from_files(*tiny_model_files, backend="tflite-int8")
    assert repaired.backend == "tflite-int8"
    np.testing.assert_array_equal(repaired.predict(x), fresh.predict(x))
    assert cached_files[0].stat().st_size > 1000


def test_shipped_weights_file_stays_under_the_repository_limit():
    # classic layout with HDF5's shuffle + gzip filters (model_files.save_classic_weights); no file over 20 MB
    assert Config().weights_path.stat().st_size < 20 * 1024 * 1024


def test_a_copy_runs_its_own_interpreter_with_the_same_outputs(tiny_model_files, faces):
    classifier = Classifier.from_files(*tiny_model_files, backend="tflite-int8")
    twin = classifier.copy(threads=1)
    assert twin is not classifier and twin._interpreter is not classifier._interpreter
    batch = np.stack([f[..., None] / 255.0 for f in faces.values()]).astype(np.float32)
    np.testing.assert_allclose(twin.predict(batch), classifier.predict(batch), atol=1e-6)
    graph = Classifier.from_files(*tiny_model_files, backend="tf.function")
    assert graph.copy() is graph  # one graph serves every thread
