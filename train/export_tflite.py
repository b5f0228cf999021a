"""Write ``model.tflite``, the shipped model for the serve-only install, from ``model.json`` + ``model_weights.h5``.

    python -m train.export_tflite                       # model.json -> model.tflite beside it
    python -m train.export_tflite --model other/model.json [--weights other/w.h5]

Converts exactly as the server's default ``tflite-int8`` backend does
(``model.classifier``: TensorFlow Lite with dynamic-range quantisation, int8
weights) and stores in the file's TFLite metadata, under
``model.litert.METADATA_NAME``, a JSON object with the SHA-256 digest of the
Keras files (``model.litert.source_digest``), their names, the class names,
the input shape and the TensorFlow version.  The server without TensorFlow
refuses a file whose digest does not match (``model.litert.load_tflite``);
``tests/test_serve_only.py`` checks the committed file in CI.  Needs the
full install (TensorFlow).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from fer_server.atomic import write_atomic
from fer_server.config import Config
from fer_server.model.classifier import convert_to_tflite
from fer_server.model.files import ModelLoadError, load_model
from fer_server.model.litert import METADATA_NAME, source_digest, source_files, tflite_path_for


def with_metadata(flatbuffer, name, payload):
    """``flatbuffer`` with one more TFLite metadata entry ``name`` holding ``payload`` bytes.

    Uses TensorFlow's generated schema classes (``ModelT`` object API), as
    ``tensorflow/lite/tools/flatbuffer_utils.py`` does, and writes the file
    identifier ``TFL3`` back.
    """
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode()] + [entry]
    builder = flatbuffers.Builder(len(flatbuffer) + len(payload) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def export(model_path, weights_path=None, out=None):
    """Convert the Keras model files to int8 TFLite with the digest metadata; returns the written path.

    Raises:
        ModelLoadError: the Keras files cannot be loaded.
        OSError: ``out`` cannot be written.
    """
    import tensorflow as tf

    model, info = load_model(model_path, weights_path)
    flatbuffer = convert_to_tflite(model, quantize=True)
    payload = json.dumps({
        "digest": source_digest(model_path, weights_path),
        "sources": [p.name for p in source_files(model_path, weights_path)],
        "class_names": list(info.labels), "input_shape": list(info.input_shape),
        "quantization": "dynamic-range int8 weights (tf.lite.Optimize.DEFAULT)", "tensorflow": tf.__version__,
    }).encode()
    out = Path(out) if out else tflite_path_for(model_path)
    data = with_metadata(flatbuffer, METADATA_NAME, payload)
    write_atomic(out, lambda tmp: Path(tmp).write_bytes(data))
    return out


def main(argv=None):
    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(defaults.model_path), help="JSON architecture (default %(default)s)")
    p.add_argument("--weights", help="classic HDF5 weights (default: model_weights.h5 beside --model)")
    p.add_argument("--out", help="the .tflite file (default: --model with the suffix .tflite)")
    args = p.parse_args(argv)
    try:
        out = export(args.model, args.weights, args.out)
    except ModelLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) from "
          f"{' + '.join(str(f) for f in source_files(args.model, args.weights))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
