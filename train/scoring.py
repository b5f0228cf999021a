"""Scoring shared by the train/ tools: accuracy and macro-F1 with the confusion matrix,
batched prediction (with mirror test-time augmentation), calibration error, and the
report and PNG the evaluations write.  Used by ``train.evaluate``, ``train.calibrate``,
``train.folders``, ``train.card`` and ``train.logit_adjust``; imports none of them.
"""
import json

import numpy as np


#: Confidence bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


def nll(probs, labels):
    """Mean negative log-likelihood in nats of ``labels`` (``(N,)`` int) under ``probs`` (``(N, C)``)."""
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(p, 1e-12)).mean())


def expected_calibration_error(probs, labels, bins=ECE_BINS):
    """ECE: ``sum_m |B_m| / N * |accuracy(B_m) - mean confidence(B_m)|``.

    Args:
        probs: ``(N, C)`` probabilities; a face's confidence is its largest one.
        labels: ``(N,)`` int true classes.
        bins: equal-width confidence bins ``((m - 1) / bins, m / bins]``.

    Returns:
        A float in [0, 1].
    """
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for m in range(bins):
        members = index == m
        if members.any():
            total += members.sum() / len(probs) * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


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
