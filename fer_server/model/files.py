"""The model files: reading them (ours and the Keras 2 formats found elsewhere) and writing ours.

Our models are two files: ``model.json`` (the Keras JSON architecture from
``model.to_json()``, with ``class_names`` and optionally ``input_range`` and
``temperature`` added) and ``model_weights.h5`` (weights in the classic Keras
HDF5 layout that ``tf.keras`` 2.x ``save_weights("x.h5")`` wrote and that both
Keras 3 and older ``tf.keras`` read with ``model.load_weights``).  Keras 3
only *writes* weights to names ending in ``.weights.h5`` in a new layout, so
``save_model`` writes the classic layout itself with h5py.  ``load_model``
also reads the Keras 2 formats models found elsewhere come in (see there).
"""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_server.atomic import write_atomic
from fer_server.model.keras2 import MODEL_CLASSES, keras2_config_to_keras3
from fer_server.model.quiet import quiet_tensorflow

log = logging.getLogger(__name__)

#: FER2013 class names, in the data set's label order (Goodfellow et al. 2013).
FER2013_LABELS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")

#: Key under which ``model.json`` may carry its class names, in output order.
LABELS_KEY = "class_names"


class ModelLoadError(RuntimeError):
    """A model file is missing, unreadable, unsafe or does not match its architecture."""


#: Pixel scalings a model may expect, by name: the ``(low, high)`` that 0 and 255 map to.
INPUT_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0), "0,255": (0.0, 255.0)}

#: Keys of ``model.json``'s top-level object that carry the scaling and the temperature.
INPUT_RANGE_KEY = "input_range"
TEMPERATURE_KEY = "temperature"

#: Layers that would run code stored in the model file (or load other files): never loaded.
REFUSED_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda", "TFSMLayer", "__lambda__"})


#: File name endings of whole saved models (architecture and weights in one file).
WHOLE_MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")


@dataclass(frozen=True)
class ModelInfo:
    """What the server needs to know about a model besides its layers.

    Attributes:
        labels: class names, in output order.
        input_shape: ``(height, width, channels)`` of one input image in
            pixels; channels is 1 (grayscale) or 3 (RGB).
        input_range: ``(low, high)``: the values pixel levels 0 and 255 map
            to (one of ``INPUT_RANGES``).
        temperature: > 0; probabilities ``p`` are served as
            ``softmax(log(p) / temperature)`` (1.0: unchanged).
        name: the model's name (the Keras model's ``name``), shown in the
            API's ``model`` field.
    """

    labels: tuple
    input_shape: tuple = (48, 48, 1)
    input_range: tuple = (0.0, 1.0)
    temperature: float = 1.0
    name: str = "unknown"


def parse_input_range(value):
    """``"0,1"``, ``"-1,1"`` or ``"0,255"`` (or a 2-sequence of numbers) -> ``(low, high)`` floats.

    Raises:
        ValueError: any other value, in one sentence.
    """
    try:
        pair = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        pair = None
    if pair not in INPUT_RANGES.values():
        raise ValueError(f"The input range must be one of {', '.join(INPUT_RANGES)}, not {value!r}.")
    return pair


def parse_class_names(value):
    """``"Angry,Happy,..."`` or a sequence of names -> a tuple of stripped names; ``None`` stays ``None``.

    Raises:
        ValueError: an empty or duplicated name.
    """
    if value is None:
        return None
    names = tuple(n.strip() for n in (value.split(",") if isinstance(value, str) else value))
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"Class names must be distinct and non-empty, got {value!r}.")
    return names


def parse_overrides(input_range, class_names):
    """``load_model``'s ``input_range`` and ``class_names`` arguments, parsed (None stays None).

    Raises:
        ModelLoadError: a bad value, in one sentence.
    """
    try:
        return (None if input_range is None else parse_input_range(input_range)), parse_class_names(class_names)
    except ValueError as e:
        raise ModelLoadError(str(e)) from None


@quiet_tensorflow()
def load_model(model_path, weights_path=None, *, input_range=None, class_names=None):
    """Load a model: the one entry point of the server, the analyses, the evaluation and the benchmarks.

    Accepted files:

    * ``model.json`` + classic HDF5 weights: the JSON of Keras 3's
      ``to_json()`` or of tf.keras 2.x / Keras 2 (``Sequential`` or
      ``Functional``, first layer with ``batch_input_shape`` or
      ``input_shape``, or an ``InputLayer``), translated by
      ``keras2_config_to_keras3``; the weights as Keras 2
      ``save_weights("x.h5")`` or ``save_classic_weights`` write them (or a
      whole-model ``.h5``, whose weights are used).
    * a whole model alone (``weights_path`` None): a Keras 2 ``.h5`` /
      ``.hdf5`` (``model.save``) or a Keras 3 ``.keras`` file.  A
      ``weights_path`` given with one is ignored (logged).

    Nothing from the file is executed: ``Lambda`` layers, custom classes and
    serialized functions are refused.

    Args:
        model_path: the JSON architecture or the whole-model file.
        weights_path: the weights for a JSON ``model_path``; None:
            ``model_weights.h5`` in the same folder.
        input_range: ``"0,1"``, ``"-1,1"``, ``"0,255"`` or None (the JSON's
            ``input_range``, else 0,1).
        class_names: names in output order (comma-separated string or
            sequence) or None (the JSON's ``class_names``, else the FER2013
            names for a 7-output model).

    Returns:
        ``(model, info)``: a float32 ``keras.Model`` taking
        ``(N, H, W, C)`` float32 scaled to ``info.input_range`` and returning
        ``(N, len(info.labels))`` probabilities, and its ``ModelInfo``.

    Raises:
        ModelLoadError: one sentence naming the file at fault (or the bad
            argument).
    """
    model_path = Path(model_path)
    input_range, class_names = parse_overrides(input_range, class_names)
    if not model_path.is_file():
        raise ModelLoadError(f"Cannot read the model {model_path}: no such file.")
    if model_path.suffix.lower() in WHOLE_MODEL_SUFFIXES:
        if weights_path is not None:
            log.info("%s holds its own weights; ignoring %s", model_path, weights_path)
        if model_path.suffix.lower() == ".keras":
            model, metadata = _load_keras_archive(model_path), {}
        else:
            model, metadata = _load_whole_h5(model_path), {}
        return model, _model_info(model, metadata, model_path, input_range, class_names)
    weights_path = Path(weights_path) if weights_path is not None else model_path.with_name("model_weights.h5")
    try:
        config = json.loads(model_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelLoadError(f"Cannot read the model architecture {model_path}: {e.strerror}.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{model_path} is not a Keras JSON model architecture ({first_line(e)}).") from None
    model = model_from_config(config, model_path)
    info = _model_info(model, config, model_path, input_range, class_names)
    if not weights_path.is_file():
        raise ModelLoadError(f"Cannot read the model weights {weights_path}: no such file.")
    import h5py  # deferred, with Keras: the serve-only install (model.litert) needs neither

    try:
        with h5py.File(weights_path, "r") as f:
            load_classic_weights(model, f, weights_path, model_path)
    except OSError as e:
        raise ModelLoadError(f"Cannot read the model weights {weights_path}: not an HDF5 file "
                             f"({first_line(e)}).") from None
    return model, info


def model_from_config(config, path):
    """Build an uncompiled ``keras.Model`` from a Keras 3 or Keras 2 config dict, safely.

    Raises:
        ModelLoadError: not a model config, an unsafe or unknown layer, or
            a config Keras cannot build (one sentence naming ``path``).
    """
    import keras  # deferred: importing TensorFlow takes seconds

    if not (isinstance(config, dict) and config.get("class_name") in MODEL_CLASSES and "config" in config):
        raise ModelLoadError(f"{path} is not a Keras JSON model architecture (no Sequential or Functional "
                             f"model at its top level).")
    check_safe_config(config, path)
    if "module" not in config:  # Keras 2 / tf.keras 2.x: Keras 3 cannot read it as it is
        config = keras2_config_to_keras3(config)
    try:
        model = keras.models.model_from_json(json.dumps(config))
    except Exception as e:  # noqa: BLE001 - any Keras complaint: one sentence
        raise ModelLoadError(f"{path} is not a Keras JSON model architecture Keras can build "
                             f"({first_line(e)}).") from None
    return model


def check_safe_config(config, path):
    """Refuse configs that would run code from the file or need classes Keras does not have.

    Every object in ``config`` (at any depth) whose ``class_name`` is in
    ``REFUSED_LAYERS`` is refused, and so is every layer (in any ``layers``
    list, nested models included) that is not a built-in Keras layer or
    model, or whose ``module`` lies outside Keras.

    Raises:
        ModelLoadError: one sentence naming ``path`` and the layer.
    """
    import keras

    def walk(node):
        if isinstance(node, dict):
            name = node.get("class_name")
            if name in REFUSED_LAYERS:
                layer = (node.get("config") or {}).get("name", "?") if isinstance(node.get("config"), dict) else "?"
                raise ModelLoadError(f"{path} has a {name} layer ({layer!r}), which would run code stored in "
                                     f"the file; such models are not loaded.")
            layers = (node.get("config") or {}).get("layers") if isinstance(node.get("config"), dict) else None
            for layer in layers or ():
                if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
                    raise ModelLoadError(f"{path} is not a Keras JSON model architecture (a layer without "
                                         f"class_name).")
                cls_name, module = layer["class_name"], layer.get("module")
                known = cls_name in MODEL_CLASSES or (
                    isinstance(getattr(keras.layers, cls_name, None), type)
                    and issubclass(getattr(keras.layers, cls_name), keras.layers.Layer))
                if cls_name in REFUSED_LAYERS:
                    continue  # walk() below names it
                if not known or (module is not None and not str(module).startswith("keras")):
                    raise ModelLoadError(f"{path} uses the layer class {cls_name!r}, which is not a built-in "
                                         f"Keras layer; custom layers are not loaded.")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)


def load_classic_weights(model, group, weights_path, model_path):
    """Set ``model``'s weights from an open classic-layout HDF5 file (or its ``model_weights`` group).

    Layers with weights are matched in order, as Keras 2's
    ``load_weights_from_hdf5_group`` matches them; every shape is checked
    before any weight is set.

    Raises:
        ModelLoadError: not a weights file, or the first layer whose weights
            disagree (named, with both shapes).
    """
    if "layer_names" not in group.attrs and "model_weights" in group:
        group = group["model_weights"]
    if "layer_names" not in group.attrs:
        raise ModelLoadError(f"{weights_path} is not a Keras weights file in the classic HDF5 layout "
                             f"(no layer_names).")
    stored = []
    for name in (_text(n) for n in group.attrs["layer_names"]):
        weight_names = [_text(n) for n in group[name].attrs.get("weight_names", [])]
        if weight_names:
            stored.append((name, [np.asarray(group[name][w]) for w in weight_names]))
    layers = [layer for layer in model.layers if layer.weights]
    for layer, (name, arrays) in zip(layers, stored):
        wanted = [tuple(w.shape) for w in layer.weights]
        found = [a.shape for a in arrays]
        if wanted != found:
            raise ModelLoadError(f"The weights file {weights_path} does not match the architecture in "
                                 f"{model_path}: layer {layer.name!r} takes weights of shapes {wanted}, "
                                 f"the file's layer {name!r} has {found}.")
    if len(layers) != len(stored):
        first = layers[len(stored)].name if len(layers) > len(stored) else stored[len(layers)][0]
        raise ModelLoadError(f"The weights file {weights_path} does not match the architecture in "
                             f"{model_path}: {len(stored)} layers with weights in the file, {len(layers)} "
                             f"in the architecture (first unmatched: {first!r}).")
    for layer, (_, arrays) in zip(layers, stored):
        layer.set_weights(arrays)


def _load_whole_h5(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                hint = (" (it holds weights only: give the JSON architecture as the model and this file as the "
                        "weights)") if "layer_names" in f.attrs else ""
                raise ModelLoadError(f"{path} is not a whole saved Keras model{hint}.")
            config = json.loads(_text(f.attrs["model_config"]))
            model = model_from_config(config, path)
            load_classic_weights(model, f, path, path)
    except OSError as e:
        raise ModelLoadError(f"Cannot read the model {path}: not an HDF5 file ({first_line(e)}).") from None
    except ValueError as e:
        raise ModelLoadError(f"{path} is not a whole saved Keras model ({first_line(e)}).") from None
    return model


def _load_keras_archive(path):
    import zipfile

    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"{path} is not a Keras .keras model archive ({first_line(e)}).") from None
    if not (isinstance(config, dict) and config.get("class_name") in MODEL_CLASSES):
        raise ModelLoadError(f"{path} is not a Keras .keras model archive (no model at its top level).")
    check_safe_config(config, path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{path} cannot be loaded by Keras ({first_line(e)}).") from None


def _model_info(model, metadata, path, input_range, class_names):
    """Check the model's input and output shapes and gather its ``ModelInfo``."""
    if len(model.inputs) != 1:
        raise ModelLoadError(f"{path} takes {len(model.inputs)} inputs, not one image.")
    outputs = model.outputs[0].shape if len(model.outputs) == 1 else None
    return model_info(tuple(model.inputs[0].shape), outputs, metadata, path, input_range, class_names, model.name)


def model_info(shape, outputs, metadata, path, input_range=None, class_names=None, name="unknown"):
    """Check a model's input and output shapes and gather its ``ModelInfo`` (for Keras and TFLite models).

    Args:
        shape: the input's shape, ``(N, H, W, C)``.
        outputs: the one output's shape, ``(N, K)``, or None for a model
            with several outputs.
        metadata: ``model.json``'s top-level object (``class_names``,
            ``input_range``, ``temperature``), or ``{}``.
        path: the file named in errors.
        input_range, class_names: overrides, as ``load_model`` takes them
            (already parsed).
        name: the model's name.

    Raises:
        ModelLoadError: one sentence naming ``path``.
    """
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:3]) or shape[3] not in (1, 3):
        raise ModelLoadError(f"{path} takes inputs of shape {shape[1:]}, not an image (height, width and 1 or "
                             f"3 channels).")
    if outputs is None or len(outputs) != 2 or not outputs[1]:
        raise ModelLoadError(f"{path} does not give one vector of class probabilities per image.")
    try:
        labels = class_names or parse_class_names(metadata.get(LABELS_KEY) or None)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path} carries bad {LABELS_KEY} ({e}).") from None
    if labels is None:
        if outputs[1] != len(FER2013_LABELS):
            raise ModelLoadError(f"{path} has {outputs[1]} outputs, so its class names must be given "
                                 f"(the FER2013 names are 7).")
        labels = FER2013_LABELS
    if len(labels) != outputs[1]:
        raise ModelLoadError(f"{path} has {outputs[1]} outputs but names {len(labels)} classes.")
    try:
        stored_range = metadata.get(INPUT_RANGE_KEY)
        input_range = input_range or (parse_input_range(stored_range) if stored_range is not None else (0.0, 1.0))
        temperature = float(metadata.get(TEMPERATURE_KEY, 1.0))
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path} carries a bad {INPUT_RANGE_KEY} or {TEMPERATURE_KEY} ({e}).") from None
    if not (np.isfinite(temperature) and temperature > 0):
        raise ModelLoadError(f"{path} carries a temperature of {temperature}; it must be a number above 0.")
    return ModelInfo(tuple(labels), tuple(int(d) for d in shape[1:]), input_range, temperature, name)


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def save_model(model, model_path, weights_path, labels=FER2013_LABELS, *, input_range=None, temperature=None):
    """Write ``model.json`` and classic-layout ``model_weights.h5``, atomically.

    Each file is written beside its final name and renamed into place, so an
    interrupted save never leaves a half-written model under the final name.

    Args:
        model: a ``keras.Model`` whose weights are float32 (build it under the
            ``float32`` policy; a ``mixed_bfloat16`` model's JSON would make
            the server compute in bfloat16).
        model_path, weights_path: destination file names.
        labels: class names in output order, stored in the JSON.
        input_range: the scaling the model expects (``"0,1"``, ``"-1,1"``,
            ``"0,255"``), stored as ``input_range`` ``[low, high]``; None
            stores nothing (readers assume 0,1).
        temperature: float > 0 stored as ``temperature``; None stores nothing
            (readers assume 1.0).

    Raises:
        ValueError: a bad ``input_range`` or ``temperature``.
    """
    config = json.loads(model.to_json())
    config[LABELS_KEY] = list(labels)
    if input_range is not None:
        config[INPUT_RANGE_KEY] = list(parse_input_range(input_range))
    if temperature is not None:
        config[TEMPERATURE_KEY] = _check_temperature(temperature)
    write_atomic(model_path, lambda tmp: Path(tmp).write_text(json.dumps(config), encoding="utf-8"))
    write_atomic(weights_path, lambda tmp: save_classic_weights(model, tmp))


def write_model_metadata(model_path, **items):
    """Set top-level keys (``temperature=1.3``, ...) of an existing ``model.json``, atomically.

    Raises:
        ModelLoadError: ``model_path`` is not a readable JSON object.
        ValueError: a bad ``temperature``.
    """
    model_path = Path(model_path)
    try:
        config = json.loads(model_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Cannot read the model architecture {model_path} ({first_line(e)}).") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{model_path} is not a Keras JSON model architecture.")
    if TEMPERATURE_KEY in items:
        items[TEMPERATURE_KEY] = _check_temperature(items[TEMPERATURE_KEY])
    config.update(items)
    write_atomic(model_path, lambda tmp: Path(tmp).write_text(json.dumps(config), encoding="utf-8"))


def _check_temperature(value):
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"The temperature must be a number above 0, not {value}.")
    return value


def save_classic_weights(model, path):
    """Write ``model``'s weights in the classic Keras HDF5 layout.

    The layout (Keras 2 ``save_weights_to_hdf5_group``): root attributes
    ``layer_names``, ``backend``, ``keras_version``; one group per layer, in
    order, with attribute ``weight_names`` (TF variable names such as
    ``block1_conv1/kernel:0``) and one float32 dataset per weight.  Layers
    without weights are listed with no datasets.  The datasets are stored
    with HDF5's byte-shuffle and gzip filters, which every HDF5 build reads
    (h5py, Keras 3, tf.keras): the values are unchanged, the file smaller
    (the shipped pair, whose kernels were rounded to float16 in training,
    from 29.5 to about 16 MB).
    """
    import h5py
    import keras

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode("utf8") for layer in model.layers]
        f.attrs["backend"] = keras.backend.backend().encode("utf8")
        f.attrs["keras_version"] = keras.__version__.encode("utf8")
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0".encode("utf8") for w in layer.weights]
            group.attrs["weight_names"] = names
            for name, weight in zip(names, layer.weights):
                group.create_dataset(name.decode("utf8"),
                                     data=np.asarray(keras.ops.convert_to_numpy(weight), np.float32),
                                     shuffle=True, compression="gzip")


def first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
