"""Models from elsewhere: Keras 2 / tf.keras 2.x files, made here with ``tf_keras`` (Keras 2 on TensorFlow).

Each fixture model gets random weights (batch-norm statistics included), so a
wrongly ordered or dropped weight changes the outputs; every loaded model must
give the probabilities ``tf_keras`` itself computes on the same input.
"""
import json

import cv2
import numpy as np
import pytest
import tf_keras as k2

from fer_server.model.classifier import apply_temperature, Classifier
from fer_server.model.files import FER2013_LABELS, load_model, save_model, ModelLoadError
from fer_server.model.keras2 import keras2_config_to_keras3
from fer_server.vision.frames import crop_faces


def randomise(model, seed=0, scale=0.2):
    """Random weights (normal, standard deviation ``scale``); batch-norm variances positive.

    Works on tf_keras and Keras 3 models alike: both name a variance variable ``...variance``.
    """
    rng = np.random.default_rng(seed)
    for w in model.weights:
        values = rng.uniform(0.5, 1.5, w.shape) if "variance" in w.name else rng.normal(0, scale, w.shape)
        w.assign(values.astype(np.float32))
    return model


def keras2_sequential(filters=4):
    return randomise(k2.Sequential([
        k2.layers.Conv2D(filters, 3, padding="same", input_shape=(48, 48, 1)),
        k2.layers.BatchNormalization(),
        k2.layers.Activation("relu"),
        k2.layers.MaxPooling2D(2),
        k2.layers.Conv2D(6, 3),
        k2.layers.Flatten(),
        k2.layers.Dropout(0.5),
        k2.layers.Dense(7, activation="softmax"),
    ]))


def as_tf_keras_2_3(config):
    """The older tf.keras 2 JSON dialect (the compat file's): no ``module`` keys, no InputLayer,
    ``batch_input_shape`` on the first layer."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("module", "registered_name", "build_config")}
        return [strip(v) for v in node] if isinstance(node, list) else node

    config = strip(config)
    layers = config["config"]["layers"]
    if layers[0]["class_name"] == "InputLayer":
        shape = layers.pop(0)["config"]["batch_input_shape"]
        layers[0]["config"]["batch_input_shape"] = shape
    return config


def write_pair(tmp_path, model, config=None, name="model"):
    model_path, weights_path = tmp_path / f"{name}.json", tmp_path / f"{name}_weights.h5"
    model_path.write_text(json.dumps(config or json.loads(model.to_json())))
    model.save_weights(str(weights_path))  # tf.keras 2 writes the classic layout for .h5
    return model_path, weights_path


@pytest.fixture(scope="module")
def x48():
    return np.random.default_rng(1).random((5, 48, 48, 1), dtype=np.float32)


@pytest.mark.parametrize("dialect", ["tf_keras 2.21", "tf.keras 2.3"])
def test_keras2_sequential_json_and_classic_weights(tmp_path, x48, dialect):
    model = keras2_sequential()
    config = json.loads(model.to_json())
    if dialect == "tf.keras 2.3":
        config = as_tf_keras_2_3(config)
        assert "batch_input_shape" in config["config"]["layers"][0]["config"]
    model_path, weights_path = write_pair(tmp_path, model, config)
    loaded, info = load_model(model_path, weights_path)
    expected = model(x48, training=False).numpy()
    assert info.labels == FER2013_LABELS and info.input_shape == (48, 48, 1) and info.input_range == (0, 1)
    np.testing.assert_allclose(loaded(x48).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(Classifier(loaded, info, backend="tflite").predict(x48), expected, atol=1e-5)


def test_keras2_functional_rgb_non_square_with_class_names(tmp_path):
    inputs = k2.Input((40, 32, 3))
    x = k2.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = k2.layers.BatchNormalization()(x)
    y = k2.layers.SeparableConv2D(4, 3, padding="same")(x)
    x = k2.layers.Activation("relu")(k2.layers.Add()([x, y]))
    x = k2.layers.GlobalAveragePooling2D()(x)
    model = randomise(k2.Model(inputs, k2.layers.Dense(3, activation="softmax")(x)), seed=2)
    model_path, weights_path = write_pair(tmp_path, model)
    loaded, info = load_model(model_path, weights_path, class_names="Happy, Sad,Neutral")
    assert info.labels == ("Happy", "Sad", "Neutral") and info.input_shape == (40, 32, 3)
    gray = np.random.default_rng(3).random((4, 40, 32, 1), dtype=np.float32)
    rgb = np.repeat(gray, 3, axis=-1)
    expected = model(rgb, training=False).numpy()
    np.testing.assert_allclose(loaded(rgb).numpy(), expected, atol=1e-5)
    classifier = Classifier(loaded, info, backend="tf.function")
    np.testing.assert_allclose(classifier.predict(gray), expected, atol=1e-5)  # grayscale replicated
    np.testing.assert_allclose(classifier.predict(rgb), expected, atol=1e-5)


def test_whole_keras2_h5_model_64x64_scaled_to_minus_one_one(tmp_path):
    from train.scoring import predict

    model = randomise(k2.Sequential([
        k2.Input((64, 64, 1)), k2.layers.Conv2D(4, 3, strides=2), k2.layers.BatchNormalization(),
        k2.layers.GlobalAveragePooling2D(), k2.layers.Dense(7, activation="softmax")]), seed=4)
    path = tmp_path / "emotion_model.hdf5"
    model.save(str(path), save_format="h5")
    loaded, info = load_model(path, input_range="-1,1")
    assert info.input_shape == (64, 64, 1) and info.input_range == (-1.0, 1.0)
    faces = np.random.default_rng(5).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    resized = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_LINEAR) for f in faces])
    expected = model(resized[..., None] / 127.5 - 1.0, training=False).numpy()
    classifier = Classifier(loaded, info, backend="tflite")
    np.testing.assert_allclose(classifier.predict(resized[..., None] / np.float32(255)), expected, atol=1e-5)
    np.testing.assert_allclose(predict(classifier, faces), expected, atol=1e-5)  # train.evaluate's path


def test_temperature_changes_probabilities_not_labels(tmp_path, x48):
    from train.model import build_model

    model = randomise(build_model(7, width=4), seed=6, scale=0.3)
    save_model(model, tmp_path / "model.json", tmp_path / "model_weights.h5", input_range="0,255", temperature=2.0)
    stored = json.loads((tmp_path / "model.json").read_text())
    assert stored["input_range"] == [0, 255] and stored["temperature"] == 2.0
    loaded, info = load_model(tmp_path / "model.json")  # the weights beside it
    assert info.temperature == 2.0 and info.input_range == (0.0, 255.0)
    raw = model(x48 * 255, training=False).numpy().astype(np.float64)
    tempered = np.sqrt(raw) / np.sqrt(raw).sum(1, keepdims=True)  # softmax(log p / 2), by hand
    got = Classifier(loaded, info, backend="tf.function").predict(x48)
    np.testing.assert_allclose(got, tempered, atol=1e-5)
    assert not np.allclose(got, raw, atol=1e-3)
    assert (got.argmax(1) == raw.argmax(1)).all()


def test_apply_temperature_by_hand():
    p = np.array([[0.7, 0.2, 0.1]])
    # T = 2: p_i^(1/2) / sum_j p_j^(1/2) = (0.83666, 0.44721, 0.31623) / 1.60010
    np.testing.assert_allclose(apply_temperature(p, 2.0), [[0.52288, 0.27949, 0.19763]], atol=1e-5)
    assert apply_temperature(p, 1.0) is p


def test_crop_faces_colour_and_non_square():
    frame = np.zeros((20, 30, 3), np.uint8)
    frame[5:15, 10:20] = (10, 20, 30)
    crops = crop_faces(frame, np.array([[10, 5, 10, 10]]), (8, 4))
    assert crops.shape == (1, 8, 4, 3) and crops.dtype == np.float32
    np.testing.assert_allclose(crops[0, 3, 2], np.array([10, 20, 30]) / 255, atol=1e-6)


def test_keras2_config_translation_is_a_keras3_config():
    config = as_tf_keras_2_3(json.loads(keras2_sequential().to_json()))
    translated = keras2_config_to_keras3(config)
    first, second = translated["config"]["layers"][:2]
    assert first["class_name"] == "InputLayer" and first["config"]["batch_shape"] == [None, 48, 48, 1]
    assert "batch_input_shape" not in second["config"] and second["module"] == "keras.layers"
    bn = translated["config"]["layers"][2]
    assert bn["class_name"] == "BatchNormalization" and bn["config"]["axis"] == 3
    assert "batch_input_shape" in config["config"]["layers"][0]["config"]  # the input is left alone


# ---- bad input: one sentence each, ModelLoadError; exit code 2 from train.evaluate


def evaluate_error(capsys, *args):
    from train.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--data", "no-data.csv", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: ") and "\n" not in err
    assert "Traceback" not in err
    return err


def test_json_that_is_not_a_model(tmp_path, capsys):
    path = tmp_path / "settings.json"
    path.write_text('{"theme": "dark"}')
    err = evaluate_error(capsys, "--model", path, "--weights", tmp_path / "w.h5")
    assert "settings.json is not a Keras JSON model architecture" in err


def test_weights_that_do_not_match_name_the_layer(tmp_path):
    model_path, _ = write_pair(tmp_path, keras2_sequential(filters=4))
    _, other_weights = write_pair(tmp_path, keras2_sequential(filters=5), name="other")
    with pytest.raises(ModelLoadError, match=r"other_weights.h5 does not match .*layer 'conv2d_\d+' takes "
                                             r"weights of shapes \[\(3, 3, 1, 4\), \(4,\)\].*\(3, 3, 1, 5\)"):
        load_model(model_path, other_weights)


def test_lambda_layer_is_refused_without_running_it(tmp_path, capsys):
    model = k2.Sequential([k2.Input((48, 48, 1)), k2.layers.Lambda(lambda t: t * 2), k2.layers.Flatten(),
                           k2.layers.Dense(7, activation="softmax")])
    model_path, weights_path = write_pair(tmp_path, model)
    err = evaluate_error(capsys, "--model", model_path, "--weights", weights_path)
    assert "has a Lambda layer" in err and "not loaded" in err


def test_unknown_custom_layer_is_refused(tmp_path):
    model = keras2_sequential()
    config = json.loads(model.to_json())
    config["config"]["layers"][2]["class_name"] = "MyAttention"
    model_path, weights_path = write_pair(tmp_path, model, config)
    with pytest.raises(ModelLoadError, match="uses the layer class 'MyAttention', which is not a built-in"):
        load_model(model_path, weights_path)


def test_input_that_is_not_an_image(tmp_path, capsys):
    model = k2.Sequential([k2.Input((10,)), k2.layers.Dense(7, activation="softmax")])
    model_path, weights_path = write_pair(tmp_path, model)
    err = evaluate_error(capsys, "--model", model_path, "--weights", weights_path)
    assert "takes inputs of shape (10,), not an image" in err


def test_output_count_must_match_class_names(tmp_path, capsys):
    model_path, weights_path = write_pair(tmp_path, keras2_sequential())
    err = evaluate_error(capsys, "--model", model_path, "--weights", weights_path, "--classes", "Happy,Sad,Neutral")
    assert "has 7 outputs but names 3 classes" in err
    five = k2.Sequential([k2.Input((48, 48, 1)), k2.layers.Flatten(), k2.layers.Dense(5, activation="softmax")])
    model_path, weights_path = write_pair(tmp_path, five, name="five")
    with pytest.raises(ModelLoadError, match="has 5 outputs, so its class names must be given"):
        load_model(model_path, weights_path)


def test_bad_input_range_and_weights_only_h5(tmp_path):
    model_path, weights_path = write_pair(tmp_path, keras2_sequential())
    with pytest.raises(ModelLoadError, match="input range must be one of 0,1, -1,1, 0,255"):
        load_model(model_path, weights_path, input_range="0,2")
    with pytest.raises(ModelLoadError, match="is not a whole saved Keras model .*weights only"):
        load_model(weights_path)


def test_negative_input_range_on_the_command_line():
    from fer_server.config import join_input_range_argv

    assert join_input_range_argv(["--model", "m.h5", "--input-range", "-1,1", "--json"]) == [
        "--model", "m.h5", "--input-range=-1,1", "--json"]
    assert join_input_range_argv(["--input-range", "0,1"]) == ["--input-range", "0,1"]


def test_rgb_keras2_model_through_the_pipeline(tmp_path, clip):
    """A 3-channel model gets the colour crop in RGB order, at its own input size."""
    from fer_server.builders import build_pipeline
    from fer_server.config import Config

    inputs = k2.Input((36, 30, 3))
    x = k2.layers.Conv2D(3, 3, strides=2)(inputs)
    x = k2.layers.GlobalAveragePooling2D()(x)
    model = randomise(k2.Model(inputs, k2.layers.Dense(2, activation="softmax")(x)), seed=7)
    model_path, weights_path = write_pair(tmp_path, model)
    pipeline = build_pipeline(Config(source=str(clip), model_path=model_path, weights_path=weights_path,
                                     class_names="Happy,Sad", backend="tflite", detect_every=1, smoothing=0.0))
    capture = cv2.VideoCapture(str(clip))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.ndim == 3
    frame[..., 0] //= 2  # the clip is gray: tint it so that BGR and RGB crops differ
    faces = pipeline.find_faces(frame)
    assert len(faces) == 1 and set(faces[0].probabilities) == {"Happy", "Sad"}
    x0, y0, w, h = faces[0].box
    crop = cv2.resize(frame[y0:y0 + h, x0:x0 + w], (30, 36), interpolation=cv2.INTER_AREA)
    expected = model(crop[None, :, :, ::-1].astype(np.float32) / 255, training=False).numpy()[0]
    bgr_order = model(crop[None].astype(np.float32) / 255, training=False).numpy()[0]
    assert np.abs(expected - bgr_order).max() > 1e-3  # the test can tell the channel orders apart
    np.testing.assert_allclose([faces[0].probabilities["Happy"], faces[0].probabilities["Sad"]], expected,
                               atol=1e-5)


def test_keras3_archive_loads_and_its_lambda_is_refused(tmp_path, x48):
    import keras

    inputs = keras.Input((48, 48, 1))
    outputs = keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "whole.keras")
    loaded, info = load_model(tmp_path / "whole.keras")
    assert info.input_shape == (48, 48, 1)
    np.testing.assert_allclose(loaded(x48).numpy(), model(x48).numpy(), atol=1e-6)
    doubled = keras.layers.Lambda(lambda t: t * 2)(inputs)
    unsafe = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(doubled)))
    unsafe.save(tmp_path / "unsafe.keras")
    with pytest.raises(ModelLoadError, match="unsafe.keras has a Lambda layer"):
        load_model(tmp_path / "unsafe.keras")


def test_shipped_weights_load_into_the_same_graph_built_with_tf_keras(faces):
    """The shipped ``model_weights.h5`` is classic HDF5: tf.keras 2 loads it into the architecture
    ``model.json`` describes (built here layer by layer with ``tf_keras``, the member widths,
    crops and weights read from the JSON), and computes what Keras 3 computes from the shipped pair."""
    from fer_server.config import Config

    config = Config()
    layers = {layer["config"]["name"]: layer for layer in
              json.loads(config.model_path.read_text())["config"]["layers"]}
    members = sorted({name.split("_", 1)[0] for name in layers if name.endswith("block1_conv1")})

    def vgg(x, width, prefix):
        for block, filters in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
            for conv in (1, 2):
                x = k2.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                     name=f"{prefix}block{block}_conv{conv}")(x)
                x = k2.layers.BatchNormalization(name=f"{prefix}block{block}_bn{conv}")(x)
                x = k2.layers.ReLU(name=f"{prefix}block{block}_relu{conv}")(x)
            x = k2.layers.MaxPooling2D(name=f"{prefix}block{block}_pool")(x)
        x = k2.layers.GlobalAveragePooling2D(name=f"{prefix}gap")(x)
        x = k2.layers.Dropout(0.4, name=f"{prefix}dropout")(x)
        return k2.layers.Dense(7, activation="softmax", name=f"{prefix}predictions")(x)

    face = k2.Input((48, 48, 1), name="face")
    outputs = []
    for member in members:
        x = face
        if f"{member}_crop" in layers:
            x = k2.layers.Cropping2D(layers[f"{member}_crop"]["config"]["cropping"], name=f"{member}_crop")(x)
        outputs.append(vgg(x, layers[f"{member}_block1_conv1"]["config"]["filters"], f"{member}_"))
    assert len(outputs) == 2  # the shipped pair
    if f"{members[0]}_weight" in layers:  # a weighted mean: Rescaling each member, then Add
        outputs = [k2.layers.Rescaling(layers[f"{m}_weight"]["config"]["scale"], name=f"{m}_weight")(p)
                   for m, p in zip(members, outputs)]
        old = k2.Model(face, k2.layers.Add(name="predictions")(outputs))
    else:
        old = k2.Model(face, k2.layers.Average(name="predictions")(outputs))
    old.load_weights(str(config.weights_path))

    x = np.stack(list(faces.values()))[..., None].astype(np.float32) / 255
    model, _ = load_model(config.model_path, config.weights_path)
    np.testing.assert_allclose(old.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
