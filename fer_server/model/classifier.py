"""The expression classifier: batched inference on face crops through a compiled path.

``Classifier`` runs a model from ``model.files.load_model`` through
TensorFlow Lite (float32 or int8 weights) or a traced ``tf.function``,
scales its input as the model expects and applies its softmax temperature.
"""
import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np

from fer_server.atomic import write_atomic
from fer_server.config import BACKENDS
from fer_server.model.files import ModelInfo, ModelLoadError, first_line, load_model
from fer_server.model.litert import FULL_INSTALL, make_interpreter, read_tflite, tensorflow_installed
from fer_server.model.quiet import quiet_tensorflow

log = logging.getLogger(__name__)


def apply_temperature(probs, temperature):
    """Temperature-scale probabilities: ``softmax(log(p) / T)`` row by row (Guo et al. 2017).

    For softmax outputs ``p = softmax(z)`` this equals ``softmax(z / T)``;
    the argmax of each row never changes.

    Args:
        probs: ``(N, C)`` probabilities (rows summing to 1).
        temperature: float > 0; 1.0 returns ``probs`` unchanged.

    Returns:
        ``(N, C)`` float32 probabilities.
    """
    if temperature == 1.0:
        return probs
    z = np.log(np.maximum(np.asarray(probs, np.float64), 1e-30)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Classifier:
    """Batched inference through a compiled path.

    ``backend="tflite"`` (this class's default; the server's is
    ``config.Config.backend``, ``"tflite-int8"``) converts the model once to
    TensorFlow Lite and runs it with the interpreter that ships with
    TensorFlow (XNNPACK kernels); ``"tf.function"`` runs the Keras model in
    one traced graph.  Both give the Keras model's outputs to within 1e-6,
    and both are many times faster per call than ``model.predict``, which
    is built for large batches.  ``"tflite-int8"`` converts with
    dynamic-range quantisation (``tf.lite.Optimize.DEFAULT``: int8 weights,
    activations quantised per batch at run time), which XNNPACK runs with
    int8 kernels: several times faster than float32 on CPUs with VNNI,
    hardly faster on AVX2-only ones, with probabilities a few hundredths off
    the float model's (docs/benchmarks.md has the figures per CPU).  If
    conversion fails (an unusual custom model), the TFLite backends fall
    back to ``tf.function``.

    Args:
        model: a Keras model taking ``(N, H, W, C)`` float32 (C 1 or 3)
            scaled to ``info.input_range`` and giving ``(N, K)`` probabilities.
        info: a ``ModelInfo`` (as ``load_model`` returns it), or just the
            class names in output order (a ``ModelInfo`` with the model's
            input shape, range 0,1 and temperature 1 is made from them).
        backend: ``"tflite"``, ``"tflite-int8"`` or ``"tf.function"``.
        threads: interpreter threads for TFLite.
        interpreter: a ready TFLite interpreter to run instead of converting
            ``model`` (``model.litert.read_tflite``'s, in the serve-only
            install, where ``model`` is None).

    Attributes:
        labels, input_shape, input_range, temperature: from ``info``.
        input_size: the input height in pixels (the side of a square input).
        name: the model's name (``info.name`` without a Keras model).
        model: the Keras model, or None when only the TFLite file was loaded
            (then ``can_explain`` is False: Grad-CAM needs the Keras graph).
    """

    BACKENDS = BACKENDS

    @quiet_tensorflow()
    def __init__(self, model, info, backend="tflite", threads=2, *, interpreter=None):
        if not isinstance(info, ModelInfo):
            info = ModelInfo(tuple(info), tuple(int(d) for d in model.input_shape[1:]))
        self.model = model
        self.info = info
        self.name = model.name if model is not None else info.name
        self.labels = info.labels
        self.input_shape = info.input_shape
        self.input_size = info.input_shape[0]
        self.input_range = info.input_range
        self.temperature = info.temperature
        low, high = info.input_range
        # pixel values in [0, 1] -> the model's range; None on the default path: no extra pass
        self._scale = None if (low, high) == (0.0, 1.0) else (high - low, low)
        self._lock = threading.Lock()  # the TFLite interpreter is not thread-safe
        self.backend = backend
        if backend not in self.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; one of {', '.join(self.BACKENDS)}")
        #: threads -> a new interpreter on the same model (``copy``); None: no interpreter
        self._reopen = None
        if interpreter is not None:
            self._use_interpreter(interpreter)
        elif backend.startswith("tflite"):
            try:
                interpreter, flatbuffer = _tflite_interpreter(model, threads, quantize=backend == "tflite-int8")
                self._use_interpreter(interpreter)
                self._reopen = lambda n: _tf_interpreter(flatbuffer, n)
            except Exception as e:  # noqa: BLE001 - any converter failure: fall back
                log.warning("TensorFlow Lite conversion failed (%s); using tf.function", first_line(e))
                self.backend = "tf.function"
        if self.backend == "tf.function":
            import tensorflow as tf

            self._graph = tf.function(
                lambda x: model(x, training=False),
                input_signature=[tf.TensorSpec([None, *self.input_shape], tf.float32)])
        self.predict(np.zeros((1, *self.input_shape), np.float32))  # warm up

    def _use_interpreter(self, interpreter):
        self._interpreter = interpreter
        self._batch = None
        # tensor indices, looked up once: get_*_details() builds dicts for every tensor
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]

    def copy(self, threads=1):
        """A classifier on the same model with its own interpreter of ``threads`` threads, for another
        thread to run beside this one (``vision.background``); ``tf.function``'s graph is shared."""
        if self._reopen is None:
            return self
        twin = Classifier(self.model, self.info, self.backend, threads, interpreter=self._reopen(threads))
        twin._reopen = self._reopen
        return twin

    @property
    def can_explain(self):
        """True when the Keras model is loaded, so ``model.gradcam.GradCam`` can explain its scores."""
        return self.model is not None

    @classmethod
    def from_files(cls, model_path, weights_path=None, *, input_range=None, class_names=None,
                   backend="tflite", threads=2):
        """``load_model`` (same arguments and ``ModelLoadError``), then a ``Classifier`` (``backend``, ``threads``).

        Runs inside ``quiet_tensorflow``, so every tool that loads a model this
        way (the server, the benchmarks, the train/ tools, batch workers)
        keeps TensorFlow's start-up lines off the console.

        Without TensorFlow (the serve-only install, ``requirements-serve.txt``)
        it runs the model's committed TensorFlow Lite file instead, checked by
        ``model.litert.read_tflite``; only the ``tflite-int8`` backend exists
        there, since that file holds the int8 model.

        Raises:
            ModelLoadError: the files cannot be loaded, or (without
                TensorFlow) the ``.tflite`` file is missing, stale or wrong,
                or another backend is asked for.
        """
        with quiet_tensorflow():
            if tensorflow_installed():
                return cls(*load_model(model_path, weights_path, input_range=input_range, class_names=class_names),
                           backend=backend, threads=threads)
            if backend != "tflite-int8":
                raise ModelLoadError(f"The {backend} backend needs TensorFlow ({FULL_INSTALL}); without it the "
                                     f"server runs the model's int8 .tflite file (backend tflite-int8).")
            flatbuffer, interpreter, info = read_tflite(model_path, weights_path, input_range=input_range,
                                                        class_names=class_names, threads=threads)
            classifier = cls(None, info, backend, threads, interpreter=interpreter)
            classifier._reopen = lambda n: make_interpreter(flatbuffer, n)  # the bytes read_tflite checked
            return classifier

    def model_input(self, faces):
        """``faces`` as the model takes them: ``(N, H, W, C)`` float32, channels and range the model's.

        Args:
            faces: as ``predict`` takes them.
        """
        faces = np.ascontiguousarray(faces, np.float32)
        if faces.shape[-1] != self.input_shape[2]:
            faces = np.repeat(faces, self.input_shape[2], axis=-1)
        if self._scale is not None:
            faces = faces * self._scale[0] + self._scale[1]
        return faces

    def predict(self, faces):
        """Class probabilities for a batch of faces.

        Args:
            faces: ``(N, H, W, C)`` float32 pixel values in [0, 1], ``(H, W)``
                the model's input size; ``C`` is the model's channel count or
                1 (grayscale, replicated for an RGB model; colour faces are
                RGB).  ``N`` may be 0.  Scaled here to the model's input range.

        Returns:
            ``(N, len(labels))`` float32, each row summing to 1, temperature
            applied.
        """
        if len(faces) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        faces = self.model_input(faces)
        if self.backend == "tf.function":
            return apply_temperature(self._graph(faces).numpy(), self.temperature)
        with self._lock:
            interpreter = self._interpreter
            if self._batch != len(faces):
                interpreter.resize_tensor_input(self._input, faces.shape)
                interpreter.allocate_tensors()
                self._batch = len(faces)
            interpreter.set_tensor(self._input, faces)
            interpreter.invoke()
            probs = interpreter.get_tensor(self._output).copy()
        return apply_temperature(probs, self.temperature)


def tflite_cache_dir():
    """Where converted models are kept: ``$FER_SERVER_CACHE``, else ``~/.cache/fer-server/tflite``."""
    return Path(os.environ.get("FER_SERVER_CACHE") or Path.home() / ".cache" / "fer-server" / "tflite")


def _model_digest(model, quantize):
    """SHA-256 of what a conversion depends on: architecture, weights, quantisation, TensorFlow version."""
    import tensorflow as tf

    digest = hashlib.sha256(f"{tf.__version__}|{quantize}|{model.to_json()}".encode())
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def convert_to_tflite(model, quantize):
    """The TensorFlow Lite flatbuffer of ``model`` (float32, or int8 weights with ``quantize``)."""
    import io

    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its saved model
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def _tf_interpreter(flatbuffer, threads):
    """TensorFlow's own TFLite interpreter on ``flatbuffer`` with ``threads`` threads.

    Raises:
        ValueError, RuntimeError: the bytes are not a model it can run.
    """
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():
        # TensorFlow marks tf.lite.Interpreter deprecated in favour of the separate
        # ai-edge-litert package; it still ships with the TensorFlow pinned here.
        warnings.simplefilter("ignore", UserWarning)
        return tf.lite.Interpreter(model_content=flatbuffer, num_threads=threads)


def _tflite_interpreter(model, threads, quantize=False):
    """``model`` converted to TensorFlow Lite (float32, or int8 weights with ``quantize``):
    ``(interpreter of threads threads, the flatbuffer)``.

    Conversion takes about a second, a quarter of the server's start-up, so
    the flatbuffer is kept in ``tflite_cache_dir()`` under the digest of
    everything it depends on and read from there next time.  A cache that
    cannot be written or read is skipped.
    """
    path = tflite_cache_dir() / f"{_model_digest(model, quantize)}.tflite"
    flatbuffer = None
    try:
        flatbuffer = path.read_bytes()
    except OSError:
        pass
    if flatbuffer is not None:
        try:
            return _tf_interpreter(flatbuffer, threads), flatbuffer
        except (ValueError, RuntimeError):  # a damaged cache file: convert again
            log.warning("ignoring the unreadable cached model %s", path)
    flatbuffer = convert_to_tflite(model, quantize)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_bytes(flatbuffer))
    except OSError as e:
        log.debug("cannot cache the converted model in %s: %s", path.parent, e)
    return _tf_interpreter(flatbuffer, threads), flatbuffer
