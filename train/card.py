"""The model card written next to a trained model (Mitchell et al. 2019, "Model Cards for Model Reporting")."""
import csv
from pathlib import Path

from bench.inference import time_predict
from fer_server.model.classifier import Classifier
from fer_server.config import Config
from train.scoring import metrics, predict
from train.model import AUGMENTATION

#: An existing card keeps everything from this line on (experiment notes written by hand).
NOTES_MARKER = "<!-- hand-written notes: kept when the card is rewritten -->"


def write_model_card(path, classifier, images, labels, args, history_csv, precision, weights_note="the best epoch",
                     sources=None):
    """Evaluate on the selection split and write the card as Markdown.

    If ``path`` exists and holds ``NOTES_MARKER``, the part from the marker
    on is kept at the end of the new card.

    Args:
        images, labels: the selection split, ``(N, 48, 48)`` uint8 and ``(N,)`` int.
        sources: ``{"Training": text, split name: text}`` from
            ``train.data.split_sources``: where each split came from, recorded
            on the card; the second key names the selection split (default:
            PublicTest of the CSV ``args.data``).

    Returns:
        The plain ``train.evaluate.metrics`` dict with a ``tta`` entry
        holding the flip test-time-augmentation figures.
    """
    names = classifier.labels
    if sources is None:
        sources = {"Training": f"the Training rows of `{Path(args.data).name}`",
                   "PublicTest": f"the PublicTest rows of `{Path(args.data).name}`"}
    split = next(name for name in sources if name != "Training")
    plain = metrics(labels, predict(classifier, images).argmax(1), names)
    plain["tta"] = metrics(labels, predict(classifier, images, tta=True).argmax(1), names)
    served = Classifier(classifier.model, names, backend=Config.backend)  # the server's inference path
    served_accuracy = metrics(labels, predict(served, images).argmax(1), names)["accuracy"]
    speeds = {c.backend: (time_predict(c, 1, seconds=1.0) * 1e3, 32 / time_predict(c, 32, seconds=1.0))
              for c in (classifier, served)}
    epochs = []
    if Path(history_csv).exists():
        with open(history_csv, newline="") as f:
            epochs = list(csv.DictReader(f))
    best = max(epochs, key=lambda row: float(row["val_accuracy"])) if epochs else None
    model = classifier.model
    lines = [
        f"# Model card: {model.name}",
        "",
        "## Model",
        f"- Architecture: `train/model.py`, VGG-style CNN, width {args.width}, "
        f"{model.count_params():,} parameters; input 48x48 grayscale in [0, 1]; "
        f"output {len(names)} probabilities: {', '.join(names)}.",
        "- Files: `model.json` (Keras JSON, class names under `class_names`) and `model_weights.h5` "
        "(classic Keras HDF5 weights layout, float32).",
        "",
        "## Training",
        f"- Data: `{Path(args.data).name}`; trained on {sources['Training']}; epoch and weights selected on "
        f"{split} ({plain['n']} faces): {sources[split]}, so the {split} figures below are slightly "
        "optimistic; " + ("PrivateTest never used." if split == "PublicTest" else
                          "a test/ folder (Kaggle's holds PublicTest and PrivateTest together) never used."),
        f"- Recipe: {args.epochs} epochs planned, batch {args.batch_size}, AdamW (peak lr {args.lr}, "
        f"weight decay {args.weight_decay}), linear warm-up then cosine decay, label smoothing "
        f"{args.label_smoothing}, "
        + (f"targets {1 - args.soft_weight:g} x the label + {args.soft_weight:g} x the mean probabilities of "
           f"{', '.join(f'`{Path(t).name}`' for t in args.teacher)} with flip TTA (distillation), "
           if args.teacher else "")
        + "class weights (n_max/n_c)^0.5, augmentation: horizontal flip"
        + (f", rotation +-{AUGMENTATION['rotation'] * args.augment:g} deg, "
           + ", ".join(f"{k} +-{100 * AUGMENTATION[k] * args.augment:g}%" for k in ("shift", "zoom", "contrast"))
           if args.augment > 0 else "")
        + "; early stopping patience "
        f"{args.patience}; precision {precision}; seed {args.seed}.",
        f"- Epochs run: {len(epochs)}; best epoch {int(best['epoch']) + 1 if best else '?'}; "
        f"weights shipped: {weights_note}.",
        f"- Command: `python -m train --data {Path(args.data).name} --epochs {args.epochs} "
        f"--batch-size {args.batch_size} --width {args.width}"
        + (f" --average-last {args.average_last}" if args.average_last else "")
        + f" --lr {args.lr}"
        + f" --weight-decay {args.weight_decay} --augment {args.augment:g}"
        + (f" --init-weights {Path(args.init_weights).name}" if args.init_weights else "")
        + (f" --teacher {' '.join(Path(t).name for t in args.teacher)} --soft-weight {args.soft_weight:g}"
           if args.teacher else "")
        + (f" --classes {args.classes}" if args.classes else "")
        + (f" --val {Path(args.val).name}" if getattr(args, "val", None) else "")
        + (f" --val-fraction {args.val_fraction:g} --seed {args.seed}"
           if split == "Validation" and not getattr(args, "val", None) else "") + "`",
        "",
        f"## {split} results",
        f"- Accuracy {plain['accuracy']:.4f}, macro-F1 {plain['macro_f1']:.4f} (single model, no TTA).",
        f"- With flip test-time augmentation: accuracy {plain['tta']['accuracy']:.4f}, "
        f"macro-F1 {plain['tta']['macro_f1']:.4f}.",
        f"- Through the server's `{served.backend}` inference path: accuracy {served_accuracy:.4f}.",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *(f"| {n} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
          for n, c in plain["per_class"].items()),
        "",
        "Confusion matrix (rows true, columns predicted):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *(f"| {n} | " + " | ".join(str(v) for v in row) + " |" for n, row in zip(names, plain["confusion"])),
        "",
        "## Inference speed",
        *(f"- `{backend}`: {ms:.2f} ms per face at batch size 1, {rate:.0f} faces/s at batch size 32 "
          "(`Classifier.predict`, measured on the training machine right after training)."
          for backend, (ms, rate) in speeds.items()),
        "",
        "## Limits",
        "- FER2013 faces were gathered by web image search: mostly posed expressions, 48x48 grayscale, "
        "with label noise (human accuracy on it is about 65%, Goodfellow et al. 2013) and a demographic "
        "skew towards adult, light-skinned faces.",
        "- The model reads facial expressions, not emotions or intentions. Do not use it for decisions "
        "about people (hiring, policing, grading, health).",
    ]
    text = "\n".join(lines) + "\n"
    old = Path(path).read_text(encoding="utf-8") if Path(path).exists() else ""
    if NOTES_MARKER in old:
        text += "\n" + old[old.index(NOTES_MARKER):]
    Path(path).write_text(text, encoding="utf-8")
    return plain
