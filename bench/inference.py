"""Classifier inference speed: ms per face at batch size 1, faces/s at batch size 32.

    python -m bench.inference [--model model.json --weights model_weights.h5 | --model whole.h5] [--json]

Times ``Classifier.predict`` (the server's path) for each backend, on
random faces, after a warm-up call; prints one line per backend and batch
size.  In the serve-only install (no TensorFlow) it times the one path
there, ``model.tflite`` on LiteRT, as ``tflite-int8``.
"""
import argparse
import json
import sys
import time

import numpy as np

from fer_server.config import Config, join_input_range_argv


def time_predict(classifier, batch, seconds):
    """Mean seconds per ``predict`` call on a random ``(batch, H, W, 1)`` float32 batch in [0, 1]
    (grayscale, as the server's pipeline crops for a 1-channel model)."""
    height, width, _ = classifier.input_shape
    x = np.random.default_rng(0).random((batch, height, width, 1), dtype=np.float32)
    classifier.predict(x)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict(x)
        calls += 1
    return (time.perf_counter() - started) / calls


def main(argv=None):
    from fer_server.model.classifier import Classifier
    from fer_server.model.files import load_model
    from fer_server.model.litert import tensorflow_installed

    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(defaults.model_path))
    p.add_argument("--weights", help="classic HDF5 weights of a JSON --model (default: model_weights.h5 beside "
                                     "it); none for a whole-model .h5/.keras")
    p.add_argument("--input-range", choices=("0,1", "-1,1", "0,255"), metavar="0,1|-1,1|0,255",
                   help="the model's input scaling (default: from model.json, else 0,1)")
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(join_input_range_argv(sys.argv[1:] if argv is None else argv))
    results = {}
    if not tensorflow_installed():  # the serve-only install: its one path, model.tflite on LiteRT
        model, backends = None, ["tflite-int8"]
    else:
        model, info = load_model(args.model, args.weights, input_range=args.input_range)
        backends = Classifier.BACKENDS
    for backend in backends:
        classifier = (Classifier(model, info, backend=backend) if model is not None else
                      Classifier.from_files(args.model, args.weights, input_range=args.input_range, backend=backend))
        single = time_predict(classifier, 1, args.seconds)
        batch32 = time_predict(classifier, 32, args.seconds)
        results[backend] = {"ms_per_face_batch1": round(single * 1e3, 3),
                            "faces_per_s_batch32": round(32 / batch32, 1)}
        print(f"{backend:12s} batch 1: {single * 1e3:.2f} ms per face; "
              f"batch 32: {32 / batch32:.0f} faces/s", flush=True)
    if args.json:
        print(json.dumps({"model": classifier.name, "parameters": model.count_params() if model else None,
                          "runtime": "tensorflow" if model else "litert", **results}))


if __name__ == "__main__":
    main()
