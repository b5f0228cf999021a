"""The expression classifier: the model files, their loading and saving.

A model is two files: ``model.json`` (the Keras JSON architecture from
``model.to_json()``) and ``model_weights.h5`` (weights in the classic Keras
HDF5 layout that ``tf.keras`` 2.x ``save_weights("x.h5")`` wrote and that both
Keras 3 and older ``tf.keras`` read with ``model.load_weights``).  Keras 3
only *writes* weights to names ending in ``.weights.h5`` in a new layout, so
``save_model`` writes the classic layout itself with h5py.
"""
import json
import logging
import os
import threading
from pathlib import Path

import h5py
import numpy as np

from config import BACKENDS

log = logging.getLogger(__name__)

#: FER2013 class names, in the data set's label order (Goodfellow et al. 2013).
FER2013_LABELS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")

#: Key under which ``model.json`` may carry its class names, in output order.
LABELS_KEY = "class_names"


class ModelLoadError(RuntimeError):
    """A model file is missing, unreadable or does not match its architecture."""


def load_model(model_path, weights_path):
    """Load ``model.json`` + ``model_weights.h5`` with ``model_from_json`` + ``load_weights``.

    Args:
        model_path: the Keras JSON architecture.  If its top-level object has
            a ``class_names`` list, those are the labels; otherwise the seven
            FER2013 labels.
        weights_path: classic Keras HDF5 weights (``.h5``).

    Returns:
        ``(model, labels)``: a float32 ``keras.Model`` taking
        ``(N, 48, 48, 1)`` float32 in [0, 1] and returning ``(N, len(labels))``
        probabilities, and the tuple of class names.

    Raises:
        ModelLoadError: with one sentence naming the file at fault.
    """
    import keras  # deferred: importing TensorFlow takes seconds

    model_path, weights_path = Path(model_path), Path(weights_path)
    try:
        text = model_path.read_text(encoding="utf-8")
        config = json.loads(text)
        model = keras.models.model_from_json(text)
    except OSError as e:
        raise ModelLoadError(f"Cannot read the model architecture {model_path}: {e.strerror}.") from None
    except Exception as e:
        raise ModelLoadError(f"{model_path} is not a Keras JSON model architecture ({_first_line(e)}).") from None
    labels = tuple(config.get(LABELS_KEY) or FER2013_LABELS)
    outputs = model.output_shape[-1]
    if len(labels) != outputs:
        raise ModelLoadError(f"{model_path} has {outputs} outputs but names {len(labels)} classes.")
    if not weights_path.is_file():
        raise ModelLoadError(f"Cannot read the model weights {weights_path}: no such file.")
    try:
        model.load_weights(str(weights_path))
    except Exception as e:
        raise ModelLoadError(f"The weights file {weights_path} does not match the architecture in "
                             f"{model_path} ({_first_line(e)}).") from None
    return model, labels


def save_model(model, model_path, weights_path, labels=FER2013_LABELS):
    """Write ``model.json`` and classic-layout ``model_weights.h5``, atomically.

    Each file is written beside its final name and renamed into place, so an
    interrupted save never leaves a half-written model under the final name.

    Args:
        model: a ``keras.Model`` whose weights are float32 (build it under the
            ``float32`` policy; a ``mixed_bfloat16`` model's JSON would make
            the server compute in bfloat16).
        model_path, weights_path: destination file names.
        labels: class names in output order, stored in the JSON.
    """
    config = json.loads(model.to_json())
    config[LABELS_KEY] = list(labels)
    _write_atomic(model_path, lambda tmp: Path(tmp).write_text(json.dumps(config), encoding="utf-8"))
    _write_atomic(weights_path, lambda tmp: save_classic_weights(model, tmp))


def save_classic_weights(model, path):
    """Write ``model``'s weights in the classic Keras HDF5 layout.

    The layout (Keras 2 ``save_weights_to_hdf5_group``): root attributes
    ``layer_names``, ``backend``, ``keras_version``; one group per layer, in
    order, with attribute ``weight_names`` (TF variable names such as
    ``block1_conv1/kernel:0``) and one float32 dataset per weight.  Layers
    without weights are listed with no datasets.
    """
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
                                     data=np.asarray(keras.ops.convert_to_numpy(weight), np.float32))


def _write_atomic(path, write):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class Classifier:
    """Batched inference through a compiled path.

    ``backend="tflite"`` (this class's default; the server's is
    ``config.Config.backend``, ``"tflite-int8"``) converts the model once to
    TensorFlow Lite and runs it with the interpreter that ships with
    TensorFlow (XNNPACK kernels); ``"tf.function"`` runs the Keras model in
    one traced graph.  Measured on a 2-core Xeon with this project's
    1.2M-parameter model: 1.1 ms (TFLite) against 3.0 ms (tf.function,
    2.8 ms with XLA) and 51 ms (``model.predict``) per face at batch size 1.
    Both give the Keras model's outputs to within 1e-6.  ``"tflite-int8"``
    converts with dynamic-range quantisation (``tf.lite.Optimize.DEFAULT``:
    int8 weights, activations quantised per batch at run time), which
    XNNPACK runs with int8 kernels: about 0.25 ms per face and 5,000
    faces/s at batch size 32 on the same CPU, with probabilities a few
    hundredths off the float model's.  On a 2-core AMD EPYC with AVX-512
    VNNI: 0.35 against 1.25 ms per face at batch size 1, 3,085 against 800
    faces/s at batch size 32.  On one with AVX2 only, it is hardly faster
    than float32 (4.75 against 6.03 ms, 197 against 204 faces/s).  If conversion fails
    (an unusual custom model), the TFLite backends fall back to
    ``tf.function``.

    Args:
        model: a Keras model taking ``(N, S, S, 1)`` float32 in [0, 1].
        labels: class names in output order.
        backend: ``"tflite"``, ``"tflite-int8"`` or ``"tf.function"``.
        threads: interpreter threads for TFLite.
    """

    BACKENDS = BACKENDS

    def __init__(self, model, labels, backend="tflite", threads=2):
        self.model = model
        self.labels = tuple(labels)
        self.input_size = int(model.input_shape[1])
        self._lock = threading.Lock()  # the TFLite interpreter is not thread-safe
        self.backend = backend
        if backend not in self.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; one of {', '.join(self.BACKENDS)}")
        if backend.startswith("tflite"):
            try:
                self._interpreter = _tflite_interpreter(model, threads, quantize=backend == "tflite-int8")
                self._batch = None
                # tensor indices, looked up once: get_*_details() builds dicts for every tensor
                self._input = self._interpreter.get_input_details()[0]["index"]
                self._output = self._interpreter.get_output_details()[0]["index"]
            except Exception as e:  # noqa: BLE001 - any converter failure: fall back
                log.warning("TensorFlow Lite conversion failed (%s); using tf.function", _first_line(e))
                self.backend = "tf.function"
        if self.backend == "tf.function":
            import tensorflow as tf

            self._graph = tf.function(
                lambda x: model(x, training=False),
                input_signature=[tf.TensorSpec([None, self.input_size, self.input_size, 1], tf.float32)])
        self.predict(np.zeros((1, self.input_size, self.input_size, 1), np.float32))  # warm up

    @classmethod
    def from_files(cls, model_path, weights_path, **kwargs):
        """Load with ``load_model``; raises ``ModelLoadError`` as it does."""
        return cls(*load_model(model_path, weights_path), **kwargs)

    def predict(self, faces):
        """Class probabilities for a batch of faces.

        Args:
            faces: ``(N, S, S, 1)`` float32 in [0, 1]; ``N`` may be 0.

        Returns:
            ``(N, len(labels))`` float32, each row summing to 1.
        """
        if len(faces) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        faces = np.ascontiguousarray(faces, np.float32)
        if self.backend == "tf.function":
            return self._graph(faces).numpy()
        with self._lock:
            interpreter = self._interpreter
            if self._batch != len(faces):
                interpreter.resize_tensor_input(self._input, faces.shape)
                interpreter.allocate_tensors()
                self._batch = len(faces)
            interpreter.set_tensor(self._input, faces)
            interpreter.invoke()
            return interpreter.get_tensor(self._output).copy()


def _tflite_interpreter(model, threads, quantize=False):
    """Convert ``model`` to TensorFlow Lite (float32, or int8 weights with
    ``quantize``) and open an interpreter on it."""
    import contextlib
    import io
    import warnings

    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its saved model
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    with warnings.catch_warnings():
        # TensorFlow marks tf.lite.Interpreter deprecated in favour of the separate
        # ai-edge-litert package; it still ships with the TensorFlow pinned here.
        warnings.simplefilter("ignore", UserWarning)
        return tf.lite.Interpreter(model_content=flatbuffer, num_threads=threads)
