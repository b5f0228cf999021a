"""The shipped model as one TensorFlow Lite file, for serving without TensorFlow.

``python -m train.export_tflite`` converts ``model.json`` + ``model_weights.h5``
to ``model.tflite`` (int8 weights, as the server's default ``tflite-int8``
backend converts them) and stores in the file's TFLite metadata (entry
``METADATA_NAME``) a SHA-256 digest of the files it came from.  Where
TensorFlow is not installed (``requirements-serve.txt``),
``model.classifier.Classifier.from_files`` runs that file with Google's LiteRT
interpreter (``ai-edge-litert``, the successor of ``tflite-runtime``) after
``load_tflite`` has checked it against the Keras files.  Nothing here imports
TensorFlow.
"""
import hashlib
import importlib.util
import json
from pathlib import Path

from fer_server.model.files import (LABELS_KEY, WHOLE_MODEL_SUFFIXES, ModelLoadError, first_line, model_info,
                                    parse_class_names, parse_overrides)

#: Name of the TFLite metadata entry holding ``{"digest": ..., "sources": [...], ...}`` as JSON.
METADATA_NAME = "fer_server"

#: The command that writes ``model.tflite``; named in every refusal.
EXPORT_COMMAND = "python -m train.export_tflite"

#: What to install for what the serve-only install leaves out.
FULL_INSTALL = "pip install -r requirements.txt"


def tensorflow_installed():
    """True when TensorFlow and Keras can be imported (the full install); neither is imported here."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "keras"))


def tflite_path_for(model_path):
    """The TensorFlow Lite file that goes with a model: ``model.json`` -> ``model.tflite`` (same folder)."""
    return Path(model_path).with_suffix(".tflite")


def source_files(model_path, weights_path=None):
    """The Keras files a model is read from: ``(model_path, weights)``, or ``(model_path,)`` for a whole model.

    ``weights_path`` None means ``model_weights.h5`` beside a JSON model, as
    ``model.files.load_model`` reads it.
    """
    model_path = Path(model_path)
    if model_path.suffix.lower() in WHOLE_MODEL_SUFFIXES:
        return (model_path,)
    return model_path, Path(weights_path) if weights_path is not None else model_path.with_name("model_weights.h5")


def source_digest(model_path, weights_path=None):
    """SHA-256 (hex) of a model's Keras files, as ``model.tflite`` records it.

    A JSON architecture is hashed as its parsed content (keys sorted, no
    whitespace), so a checkout that rewrites line endings keeps the digest;
    weights and whole-model files as their bytes.  Each part is
    length-prefixed.

    Raises:
        ModelLoadError: a file cannot be read, or the JSON does not parse.
    """
    digest = hashlib.sha256()
    for path in source_files(model_path, weights_path):
        try:
            data = path.read_bytes()
            if path.suffix.lower() == ".json":
                data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
        except OSError as e:
            raise ModelLoadError(f"Cannot read the model file {path}: {e.strerror}.") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{path} is not a Keras JSON model architecture ({first_line(e)}).") from None
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def read_metadata(flatbuffer):
    """The TFLite metadata entries of a model file: ``{name: bytes}``.

    Reads the ``Model`` table of the TFLite flatbuffer schema
    (tensorflow/compiler/mlir/lite/schema/schema.fbs: field 4 ``buffers``,
    field 6 ``metadata``; ``Metadata`` is ``name``, ``buffer``; ``Buffer``'s
    field 0 is ``data``) with the ``flatbuffers`` package that LiteRT and
    TensorFlow both install.

    Args:
        flatbuffer: the file's bytes.

    Raises:
        ValueError: not a TFLite flatbuffer (wrong identifier, truncated).
    """
    from flatbuffers import number_types, table
    from flatbuffers.encode import Get
    from flatbuffers.packer import uoffset

    buf = bytearray(flatbuffer)
    if len(buf) < 8 or bytes(buf[4:8]) != b"TFL3":
        raise ValueError("no TFL3 file identifier")
    try:
        model = table.Table(buf, Get(uoffset, buf, 0))

        def vector(tab, field):
            offset = tab.Offset(4 + 2 * field)
            if not offset:
                return []
            start = tab.Vector(offset)
            return [table.Table(buf, tab.Indirect(start + 4 * i)) for i in range(tab.VectorLen(offset))]

        buffers = vector(model, 4)
        entries = {}
        for entry in vector(model, 6):
            name = entry.String(entry.Pos + entry.Offset(4)).decode("utf-8")
            index = entry.Get(number_types.Uint32Flags, entry.Pos + entry.Offset(6))
            data = buffers[index]
            offset = data.Offset(4)
            entries[name] = bytes(data.Bytes[data.Vector(offset):data.Vector(offset) + data.VectorLen(offset)]
                                  if offset else b"")
        return entries
    except Exception:  # noqa: BLE001 - any malformed table: an IndexError, a struct.error, ...
        raise ValueError("truncated or damaged") from None


def make_interpreter(flatbuffer, threads=2):
    """A TFLite interpreter on ``flatbuffer``: LiteRT's when installed, else the one inside TensorFlow.

    Raises:
        ValueError: the bytes are not a model the interpreter can run.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import warnings

        import tensorflow as tf

        with warnings.catch_warnings():  # TensorFlow points at ai-edge-litert; this is the fallback
            warnings.simplefilter("ignore", UserWarning)
            return tf.lite.Interpreter(model_content=bytes(flatbuffer), num_threads=threads)
    return Interpreter(model_content=bytes(flatbuffer), num_threads=threads)


def load_tflite(model_path, weights_path=None, *, input_range=None, class_names=None, threads=2):
    """``read_tflite`` without the file's bytes: ``(interpreter, info)``; same arguments and errors."""
    _, interpreter, info = read_tflite(model_path, weights_path, input_range=input_range, class_names=class_names,
                                       threads=threads)
    return interpreter, info


def read_tflite(model_path, weights_path=None, *, input_range=None, class_names=None, threads=2):
    """Check and open ``model.tflite`` for the Keras files ``model_path`` (+ ``weights_path``).

    The checks, each refused in one sentence that names the file and the
    command that fixes it: the file exists; it is a TFLite model; its
    metadata digest equals ``source_digest`` of the Keras files (else it is
    stale); its input shape and class count match ``model.json``.

    Args:
        model_path, weights_path, input_range, class_names: as
            ``model.files.load_model`` takes them.
        threads: interpreter threads.

    Returns:
        ``(flatbuffer, interpreter, info)``: the checked file's bytes (for
        more interpreters, ``make_interpreter``), a LiteRT interpreter
        (tensors allocated, batch 1) taking ``(N, H, W, C)`` float32 scaled to
        ``info.input_range`` and giving ``(N, K)`` probabilities, and the
        model's ``ModelInfo`` (from ``model.json``, as the Keras path reads it).

    Raises:
        ModelLoadError: as above, or the Keras files cannot be read.
    """
    model_path = Path(model_path)
    input_range, class_names = parse_overrides(input_range, class_names)
    path = tflite_path_for(model_path)
    if not path.is_file():
        raise ModelLoadError(f"Serving {model_path} without TensorFlow needs {path}, which is missing: write it "
                             f"with {EXPORT_COMMAND} --model {model_path}, or install TensorFlow ({FULL_INSTALL}).")
    flatbuffer = path.read_bytes()
    try:
        metadata = read_metadata(flatbuffer)
        interpreter = make_interpreter(flatbuffer, threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{path} is not a TensorFlow Lite model ({first_line(e)}): rewrite it with "
                             f"{EXPORT_COMMAND} --model {model_path}.") from None
    try:
        recorded = json.loads(metadata[METADATA_NAME])["digest"]
    except (KeyError, ValueError, TypeError):
        recorded = None
    if recorded != source_digest(model_path, weights_path):
        sources = " + ".join(p.name for p in source_files(model_path, weights_path))
        raise ModelLoadError(f"{path} was not written from the current {sources} (stale or foreign): rewrite it "
                             f"with {EXPORT_COMMAND} --model {model_path}.")
    config = {}
    if model_path.suffix.lower() == ".json":
        config = json.loads(model_path.read_text(encoding="utf-8"))
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(f"{path} takes {len(inputs)} inputs and gives {len(outputs)} outputs, not one each.")
    shape = tuple(int(d) for d in inputs[0]["shape"])
    declared = declared_input_shape(config)
    if declared is not None and declared != shape[1:]:
        raise ModelLoadError(f"{path} takes inputs of shape {shape[1:]}, but {model_path} declares {declared}: "
                             f"rewrite it with {EXPORT_COMMAND} --model {model_path}.")
    try:
        labels = class_names or parse_class_names(config.get(LABELS_KEY) or None)
    except (TypeError, ValueError):
        labels = None  # bad class names: model_info below says so
    n_out = int(outputs[0]["shape"][-1])
    if labels is not None and len(labels) != n_out:
        raise ModelLoadError(f"{path} gives {n_out} class probabilities, but {model_path} names {len(labels)} "
                             f"classes: rewrite it with {EXPORT_COMMAND} --model {model_path}.")
    name = (config.get("config") or {}).get("name") or model_path.stem
    info = model_info(shape, (None, n_out), config, path, input_range, class_names, name)
    return flatbuffer, interpreter, info


def declared_input_shape(config):
    """``(H, W, C)`` that a Keras JSON architecture's input layer declares, or None if it declares none.

    Reads Keras 3's ``batch_shape`` or Keras 2's ``batch_input_shape`` of the
    first layer (the ``InputLayer``, or the first layer of a ``Sequential``).
    """
    layers = (config.get("config") or {}).get("layers") if isinstance(config, dict) else None
    settings = (layers[0].get("config") or {}) if layers else {}
    shape = settings.get("batch_shape") or settings.get("batch_input_shape")
    return tuple(int(d) for d in shape[1:]) if shape else None
