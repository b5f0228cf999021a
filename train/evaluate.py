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
import json
import sys

import numpy as np

from config import BACKENDS, Config, join_input_range_argv
from train.data import SPLITS, DataError, load_fer2013_csv


def metrics(y_true, y_pred, labels):
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    Args:
        y_true, y_pred: ``(N,)`` int class indices.
        labels: class names, index order.

    Returns:
        A JSON-ready dict: ``accuracy`` and ``macro_f1`` in [0, 1], ``n``,
        ``per_class`` ``{name: {precision, recall, f1, support}}`` and
        ``confusion`` (``len(labels)`` lists, rows true, columns predicted).
        A class never predicted has precision 0; F1 is 0 where P + R is 0.
    """
    k = len(labels)
    confusion = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion).astype(np.float64)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros(k), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros(k), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k),
                   where=precision + recall > 0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(tp.sum() / max(1, len(y_true))),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                             "f1": round(float(f1[i]), 4), "support": int(confusion[i].sum())}
                      for i, name in enumerate(labels)},
        "confusion": confusion.tolist(),
    }


def predict(classifier, images, tta=False, batch_size=256):
    """``(N, C)`` float32 probabilities for ``(N, 48, 48)`` uint8 faces; ``tta`` adds the mirror image.

    Faces are resized (bilinear) to the model's input height and width when
    these differ from 48x48; the classifier applies channels and scaling.
    """
    height, width = classifier.input_shape[:2]
    if images.shape[1:3] != (height, width):
        import cv2

        images = np.stack([cv2.resize(face, (width, height), interpolation=cv2.INTER_LINEAR) for face in images])
    x = images[..., None].astype(np.float32) / 255.0
    out = []
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size]
        p = classifier.predict(batch)
        if tta:
            p = (p + classifier.predict(batch[:, :, ::-1].copy())) / 2
        out.append(p)
    return np.concatenate(out)


def write_outputs(result, labels, png, title, as_json):
    """Save ``result``'s confusion matrix to ``png`` (titled ``title``), say where, and with
    ``as_json`` print ``result`` as one JSON line: the end of every evaluation command."""
    save_confusion_png(result["confusion"], labels, png, title)
    print(f"confusion matrix saved to {png}")
    if as_json:
        print(json.dumps(result))


def save_confusion_png(confusion, labels, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{confusion[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center",
                    fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(result, labels):
    lines = [f"n={result['n']}  accuracy={result['accuracy']:.4f}  macro-F1={result['macro_f1']:.4f}", "",
             f"{'class':10s}{'precision':>10s}{'recall':>10s}{'F1':>10s}{'support':>10s}"]
    for name in labels:
        c = result["per_class"][name]
        lines.append(f"{name:10s}{c['precision']:10.3f}{c['recall']:10.3f}{c['f1']:10.3f}{c['support']:10d}")
    return "\n".join(lines + confusion_lines(result["confusion"], labels, labels))


def confusion_lines(confusion, rows, columns):
    """The confusion matrix as text lines: a blank line, a title, a header of ``columns``, one line per row."""
    lines = ["", "confusion matrix (rows true, columns predicted):",
             " " * 10 + "".join(f"{name[:8]:>9s}" for name in columns)]
    for name, row in zip(rows, confusion):
        lines.append(f"{name:10s}" + "".join(f"{v:9d}" for v in row))
    return lines


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

    from classifier import Classifier
    from model_files import FER2013_LABELS, ModelLoadError

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
