"""How much each camera-like change of the face moves a model: PublicTest through each transform.

    python -m train.robustness --data fer2013.csv.gz --model model.json [--model other/model.json ...] [--json]

Each transform of ``train.camera_augment.TRANSFORMS`` (lighting, blur,
noise, resolution loss, box jitter, JPEG) is applied to every PublicTest face
with probability 1 (``geometry``: its training ranges, no mirror), with a
fixed seed, and the faces go through the server's classifier
(``--backend``, ``tflite-int8`` by default).  The table gives accuracy and
macro-F1 per model for the clean faces, each transform alone, and all of
them in turn (what ``train.distil`` trains on): a model trained with these
views should lose less to each.  Only PublicTest is read.
"""
import argparse
import json
import sys

import numpy as np

from fer_server.config import BACKENDS, Config
from train import camera_augment
from train.data import DataError, load_fer2013_csv
from train.scoring import metrics, predict

def views(faces, seed=0):
    """``{name: (N, 48, 48) uint8}``: the clean faces, each transform alone, and all in turn."""
    out = {"clean": faces}
    for name, transform in camera_augment.TRANSFORMS.items():
        rng = np.random.default_rng(seed)
        out[name] = transform(faces, rng, flip=0.0) if name == "geometry" else transform(faces, rng, p=1.0)
    out["all (training mix)"] = camera_augment.camera_views(faces, np.random.default_rng(seed))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.robustness", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="fer2013.csv(.gz); only PublicTest is used")
    p.add_argument("--model", action="append", required=True, help="model.json (weights beside it); repeat")
    p.add_argument("--backend", choices=BACKENDS, default=Config().backend)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    from fer_server.model.classifier import Classifier
    from fer_server.model.files import FER2013_LABELS, ModelLoadError

    try:
        faces, labels = load_fer2013_csv(args.data)["PublicTest"]
        # a JSON model's weights: model_weights.h5 beside it (load_model's default)
        classifiers = [Classifier.from_files(m, backend=args.backend) for m in args.model]
    except (DataError, ModelLoadError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = {}
    for name, faces_seen in views(faces).items():
        table[name] = []
        for classifier in classifiers:
            m = metrics(labels, predict(classifier, faces_seen).argmax(1), FER2013_LABELS)
            table[name].append({"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)})
    print("PublicTest accuracy / macro-F1 by view; models: " + ", ".join(args.model))
    for name, row in table.items():
        print(f"  {name:20s} " + "   ".join(f"{r['accuracy']:.2%} / {r['macro_f1']:.3f}" for r in row))
    if args.json:
        print(json.dumps({"models": args.model, "backend": args.backend, "views": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
