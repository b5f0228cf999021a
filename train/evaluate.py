"""Evaluate a model on a FER2013 split.

    python -m train.evaluate --data path/to/fer2013.csv.gz --split PublicTest [--tta] [--json]
    python -m train.evaluate --data fer2013.csv.gz --model emotion_model.hdf5 --input-range -1,1

Prints accuracy, macro-F1, per-class precision/recall/F1 and the confusion
matrix (rows: true class, columns: predicted), and saves the confusion
matrix as a PNG.  ``--tta`` (test-time augmentation) averages the
probabilities of each face and its horizontal mirror.  With ``--json`` the
last line is one JSON object with ``accuracy``, ``macro_f1``, ``n``,
``per_class`` and ``confusion``.
"""
import argparse
import sys

import numpy as np

from fer_server.config import BACKENDS, Config, join_input_range_argv
from train.data import SPLITS, DataError, load_fer2013_csv
from train.scoring import format_report, metrics, predict, write_outputs


def main(argv=None):
    from train import folders  # labelled image folders (--data FOLDER, --manifest): train/folders.py
    if folders.wants_folders(sys.argv[1:] if argv is None else argv):
        return folders.main(argv)
    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FER2013 CSV, plain or .gz")
    p.add_argument("--split", choices=SPLITS, default="PublicTest")
    p.add_argument("--model", default=str(defaults.model_path))
    p.add_argument("--weights", help="classic HDF5 weights of a JSON --model (default: model_weights.h5 beside "
                                     "it); none for a whole-model .h5/.hdf5/.keras")
    p.add_argument("--input-range", choices=("0,1", "-1,1", "0,255"), metavar="0,1|-1,1|0,255",
                   help="the model's input scaling (default: from model.json, else 0,1)")
    p.add_argument("--classes", help="comma-separated class names in output order; each must be a FER2013 "
                                     "name (default: from model.json, else FER2013 order)")
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                   help="inference path (default: the server's, %(default)s)")
    p.add_argument("--tta", action="store_true", help="average with the horizontally mirrored face")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--confusion-png", help="where to save the confusion matrix "
                                           "(default: confusion_<split>.png)")
    args = p.parse_args(join_input_range_argv(sys.argv[1:] if argv is None else argv))

    from fer_server.model.classifier import Classifier
    from fer_server.model.files import FER2013_LABELS, ModelLoadError

    try:
        classifier = Classifier.from_files(args.model, args.weights, input_range=args.input_range,
                                           class_names=args.classes, backend=args.backend)
        data = load_fer2013_csv(args.data)
    except (DataError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.split not in data:
        sys.exit(f"error: {args.data} has no {args.split} rows")
    images, y_true = data[args.split]
    labels = classifier.labels
    y_pred = predict(classifier, images, args.tta).argmax(1)
    if labels != FER2013_LABELS:  # score by name against the data set's labels
        fer = {name.lower(): i for i, name in enumerate(FER2013_LABELS)}
        if not all(name.lower() in fer for name in labels):
            print(f"error: {args.model}: the classes {', '.join(labels)} are not all FER2013 classes "
                  f"({', '.join(FER2013_LABELS)}).", file=sys.stderr)
            sys.exit(2)
        y_pred = np.array([fer[name.lower()] for name in labels])[y_pred]
        labels = FER2013_LABELS
    result = metrics(y_true, y_pred, labels)
    result.update(split=args.split, tta=args.tta, model=str(args.model))
    print(format_report(result, labels))
    png = args.confusion_png or f"confusion_{args.split}{'_tta' if args.tta else ''}.png"
    write_outputs(result, labels, png, f"{args.split}{' + TTA' if args.tta else ''}: accuracy "
                  f"{result['accuracy']:.1%}", args.json)


if __name__ == "__main__":
    main()
