"""Post-hoc logit adjustment: does removing the training priors help on other faces?

    python -m train.logit_adjust --data path/to/fer2013.csv.gz --taus 0,0.25,0.5,0.75,1 \\
        [--folders FOLDER ...] [--json]

Menon et al. 2021 ("Long-tail learning via logit adjustment", ICLR 2021)
subtract ``tau * log prior`` from each class's log-probability, the priors
being the training set's class frequencies; ``tau = 1`` is their
balanced-error choice.  The class weighting used in training already lifts
the rare classes, so the right ``tau`` may be 0 or negative.  For each
``tau`` this prints PublicTest accuracy and macro-F1 (the split to choose
``tau`` on) and, for each labelled folder given (``FOLDER/<Label>/<image>``,
evaluated as ``train.evaluate --data FOLDER`` does, through the
``/api/predict`` path), accuracy (no face = wrong) and macro-F1.  It only
measures: nothing in the server applies an adjustment.
"""
import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np


def class_priors(labels, num_classes):
    """``(C,)`` float64 class frequencies of ``labels`` (``(N,)`` ints in ``[0, C)``), summing to 1.

    Raises:
        ValueError: a class has no example (its log-prior would be -inf).
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"class(es) {np.flatnonzero(counts == 0).tolist()} have no example; priors undefined")
    return counts / counts.sum()


def logit_adjust(probs, priors, tau):
    """Logit-adjusted scores (Menon et al. 2021, eq. 9 applied post hoc).

    Args:
        probs: ``(N, C)`` softmax probabilities.
        priors: ``(C,)`` training class frequencies, all > 0.
        tau: adjustment strength; 0 leaves the argmax unchanged.

    Returns:
        ``(N, C)`` float64 scores ``log p - tau * log prior``; their argmax is
        the adjusted prediction (they are not probabilities).
    """
    return np.log(np.maximum(np.asarray(probs, np.float64), 1e-12)) - tau * np.log(np.asarray(priors))[None, :]


def summary(y_true, y_pred, num_classes=7):
    """Accuracy, macro-F1 and per-class recall, compact (``train.scoring.metrics`` is the full report).

    Returns:
        ``{"accuracy": float, "macro_f1": float, "recall": [C floats]}``, rounded.
    """
    from train.scoring import metrics

    m = metrics(np.asarray(y_true), np.asarray(y_pred), [str(i) for i in range(num_classes)])
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
            "recall": [round(c["recall"], 3) for c in m["per_class"].values()]}


def choose_prior_share(logits, labels, log_prior, tau, min_macro_f1, step=0.05):
    """How much of the training prior to add back to logit-adjusted scores, chosen on one split.

    A network trained with the logit-adjusted loss (Menon et al. 2021, eq.
    10; ``train.losses.distillation_loss``) has scores without the training
    priors: ``argmax(logits)`` aims at balanced error.  Adding ``c * log
    prior`` back, c in [0, tau], moves towards plain accuracy; c = tau
    undoes the adjustment.

    Args:
        logits: ``(N, C)`` scores; labels: ``(N,)`` ints; log_prior: ``(C,)``.
        min_macro_f1: the macro-F1 a choice must reach.

    Returns:
        ``(c, table)``: the most accurate c on a ``step`` grid whose macro-F1
        is at least ``min_macro_f1`` (ties: the larger macro-F1, then the
        smaller c; the highest macro-F1 if none reaches it), and ``{c:
        summary}`` for every c tried.
    """
    table = {}
    for c in np.round(np.arange(0, tau + 1e-9, step), 4):
        table[float(c)] = summary(labels, (np.asarray(logits) + c * np.asarray(log_prior)).argmax(1),
                                  num_classes=np.asarray(logits).shape[1])
    ok = [c for c, s in table.items() if s["macro_f1"] >= min_macro_f1]
    if ok:
        return max(ok, key=lambda c: (table[c]["accuracy"], table[c]["macro_f1"], -c)), table
    return max(table, key=lambda c: (table[c]["macro_f1"], -c)), table


def main(argv=None):
    from fer_server.model.classifier import Classifier
    from fer_server.config import BACKENDS, Config
    from train.data import load_fer2013_csv
    from train.scoring import metrics, predict
    from train.folders import classify_items, load_folder, score

    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FER2013 CSV with Training and PublicTest rows")
    p.add_argument("--taus", default="-0.5,-0.25,0,0.25,0.5,0.75,1")
    p.add_argument("--folders", nargs="*", default=[], help="labelled image folders to measure on")
    p.add_argument("--model", default=str(defaults.model_path))
    p.add_argument("--weights", default=str(defaults.weights_path))
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend)
    p.add_argument("--image-pad", type=float, default=defaults.image_pad, help="Config.image_pad for the folders")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from fer_server.builders import build_pipeline

    data = load_fer2013_csv(args.data)
    classifier = Classifier.from_files(args.model, args.weights, backend=args.backend)
    labels = classifier.labels
    priors = class_priors(data["Training"][1], len(labels))
    print("Training priors: " + ", ".join(f"{n} {q:.3f}" for n, q in zip(labels, priors)))
    images, y_val = data["PublicTest"]
    val_probs = predict(classifier, images)
    pipeline = build_pipeline(replace(defaults, model_path=Path(args.model), weights_path=Path(args.weights),
                                      backend=args.backend, image_pad=args.image_pad), classifier, for_images=True)
    folders = {f: classify_items(pipeline, load_folder(f, labels)) for f in args.folders}
    rows = []
    for tau in (float(t) for t in args.taus.split(",")):
        val = metrics(y_val, logit_adjust(val_probs, priors, tau).argmax(1), list(labels))
        row = {"tau": tau, "publictest_accuracy": round(val["accuracy"], 4),
               "publictest_macro_f1": round(val["macro_f1"], 4), "folders": {}}
        text = f"tau {tau:5.2f}: PublicTest accuracy {val['accuracy']:.4f} macro-F1 {val['macro_f1']:.4f}"
        for f, (probs, y_true, found, _) in folders.items():
            r = score(logit_adjust(probs, priors, tau), y_true, found, labels)
            row["folders"][Path(f).name] = {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
                                            "predicted": {k: v["predicted"] for k, v in r["distribution"].items()}}
            text += f" | {Path(f).name} accuracy {r['accuracy']:.4f} macro-F1 {r['macro_f1']:.4f}"
        print(text, flush=True)
        rows.append(row)
    best = max(rows, key=lambda r: r["publictest_accuracy"])
    print(f"tau by PublicTest accuracy: {best['tau']}")
    if args.json:
        print(json.dumps({"priors": dict(zip(labels, priors.round(4).tolist())), "rows": rows,
                          "tau_by_publictest": best["tau"]}))


if __name__ == "__main__":
    main()
