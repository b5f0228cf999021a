"""Fit a softmax temperature on a FER2013 split (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    python -m train.calibrate --data fer2013.csv.gz [--split PublicTest] [--model model.json --weights ...] [--write]

Finds the temperature ``T`` > 0 that minimises the negative log-likelihood
of ``softmax(log(p) / T)`` on the split (a golden-section search on
``log T``), and prints the expected calibration error (ECE, 15 equal-width
confidence bins) and the NLL before and after on that split.  PrivateTest,
the withheld acceptance split, is never read: ``--split PrivateTest`` is
refused, and ``--write`` only stores a temperature fitted on PublicTest.
Labels never change.  ``--write`` stores
``T`` as ``temperature`` in the JSON ``--model`` (atomically), which the
server then applies to every prediction.  The model's probabilities are
taken through ``--backend`` (the server's by default), without any
temperature the file already carries.
"""
import argparse
import dataclasses
import json
import math
import sys

import numpy as np

from fer_server.model.classifier import apply_temperature
from fer_server.config import BACKENDS, Config, join_input_range_argv
from train.data import SPLITS, DataError, load_fer2013_csv
from train.scoring import expected_calibration_error, nll, predict

def golden_section_minimum(f, low, high, tol=1e-6):
    """The ``x`` in ``[low, high]`` minimising a unimodal ``f``, to within ``tol``."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit_temperature(probs, labels, low=0.05, high=20.0):
    """The temperature in ``[low, high]`` minimising ``nll(apply_temperature(probs, T), labels)``.

    The NLL is convex in ``1 / T`` (a log-sum-exp of linear functions), so
    it has one minimum; the search runs on ``log T`` to within 1e-6.
    """
    probs = np.asarray(probs, np.float64)
    log_t = golden_section_minimum(lambda u: nll(apply_temperature(probs, math.exp(u)), labels),
                                   math.log(low), math.log(high))
    return math.exp(log_t)


def scores(probs, labels):
    return {"ece": round(expected_calibration_error(probs, labels), 4), "nll": round(nll(probs, labels), 4),
            "accuracy": round(float((np.asarray(probs).argmax(1) == labels).mean()), 4)}


def main(argv=None):
    from fer_server.model.classifier import Classifier
    from fer_server.model.files import load_model, write_model_metadata, ModelLoadError

    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FER2013 CSV, plain or .gz")
    p.add_argument("--split", choices=SPLITS, default="PublicTest", help="the split T is fitted on")
    p.add_argument("--model", default=str(defaults.model_path))
    p.add_argument("--weights", help="classic HDF5 weights of a JSON --model (default: model_weights.h5 beside it)")
    p.add_argument("--input-range", choices=("0,1", "-1,1", "0,255"), metavar="0,1|-1,1|0,255",
                   help="the model's input scaling (default: from model.json, else 0,1)")
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                   help="inference path (default: the server's, %(default)s)")
    p.add_argument("--write", action="store_true", help="store T as 'temperature' in the JSON --model")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(join_input_range_argv(sys.argv[1:] if argv is None else argv))
    if args.split == "PrivateTest":
        p.error("PrivateTest is the withheld acceptance split: nothing is fitted on it; fit on PublicTest "
                "(the default) and report PrivateTest once with python -m train.evaluate --split PrivateTest")
    if args.write and args.split != "PublicTest":
        p.error(f"--write stores a temperature fitted on PublicTest only, not on {args.split}")

    try:
        if args.write and not args.model.lower().endswith(".json"):
            raise ModelLoadError(f"--write stores the temperature in a JSON architecture, and {args.model} is not one.")
        model, info = load_model(args.model, args.weights, input_range=args.input_range)
        classifier = Classifier(model, dataclasses.replace(info, temperature=1.0), backend=args.backend)
        data = load_fer2013_csv(args.data)
    except (DataError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.split not in data:
        print(f"error: {args.data} has no {args.split} rows", file=sys.stderr)
        sys.exit(2)
    images, labels = data[args.split]
    probs = predict(classifier, images)
    temperature = fit_temperature(probs, labels)
    result = {"split": args.split, "n": int(len(labels)), "backend": classifier.backend,
              "temperature": round(temperature, 4), "file_temperature": info.temperature,
              "before": scores(probs, labels), "after": scores(apply_temperature(probs, temperature), labels)}
    print(f"{args.split} ({len(labels)} faces, {classifier.backend}): T = {temperature:.4f} "
          f"(the file has {info.temperature:g})")
    for name in ("before", "after"):
        r = result[name]
        print(f"  {name:6s} ECE {r['ece']:.4f}  NLL {r['nll']:.4f}  accuracy {r['accuracy']:.4f}")
    if args.write:
        write_model_metadata(args.model, temperature=round(temperature, 4))
        print(f"temperature {temperature:.4f} written to {args.model}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
