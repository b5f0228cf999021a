"""Train the expression classifier on FER2013.

    python -m train --data path/to/fer2013.csv.gz --out . --epochs 40
    python -m train --data path/to/kaggle_folders --classes Angry,Happy,Sad,Neutral --out my_model

Reads the Kaggle FER2013 CSV (plain or gzip) or the Kaggle image-folder
layout (``train/<class>/*.png``), trains ``train.model`` on the ``Training``
rows (or ``train/``) with data augmentation, selects the epoch with the best
accuracy on the selection split, recomputes its batch-norm statistics on the clean
Training faces (and, with ``--average-last``, averages the last epochs'
weights) if that scores better, and writes ``model.json`` + ``model_weights.h5``
(classic HDF5 layout, the class names inside model.json), the per-epoch
history as CSV, the training curves as a PNG (livelossplot) and a model card
with the selection split's figures into ``--out``.  The model files are written only
when training finishes.

The selection split is ``PublicTest`` for the CSV.  For image folders it is
``--val FOLDER`` (``<class>/`` folders) or, without it, a stratified,
seeded ``--val-fraction`` of each class of ``train/``.  A ``test/`` folder
is never used for selection: Kaggle's holds PublicTest and PrivateTest
together.  The model card records where each split came from.

Checkpoints live outside the work tree (``--checkpoint-dir``, by default
``~/.cache/fer-server/train``).  An interrupted run, killed at any point,
continues from its last finished epoch with ``--resume`` (Keras
``BackupAndRestore``).
"""
import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from train.data import VAL_FRACTION, DataError, load_dataset, split_sources


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FER2013 CSV (plain or .gz) or image-folder root")
    p.add_argument("--val", metavar="FOLDER",
                   help="image-folder layout only: select on this folder of <class>/ folders instead of a "
                        "part of train/ (a test/ folder next to train/ is never used for selection)")
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION, metavar="F",
                   help="image-folder layout without --val: share of each class of train/ set aside for "
                        "selection, drawn with --seed (default %(default)s)")
    p.add_argument("--classes", help="comma-separated subset of the FER2013 classes, in output order")
    p.add_argument("--out", default=".", help="where model.json, model_weights.h5 and the curves go")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=32, help="filters in the first conv block")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--augment", type=float, default=1.0, metavar="S",
                   help="augmentation strength: rotation 15*S deg, shift and zoom 10*S%% and 15*S%%, "
                        "contrast 30*S%% (flips always); 0 keeps only the flips")
    p.add_argument("--patience", type=int, default=12,
                   help="stop after this many epochs without a better accuracy on the selection split")
    p.add_argument("--average-last", type=int, default=0, metavar="N",
                   help="also try the mean of the weights of the last N epochs (stochastic weight "
                        "averaging); whichever of it and the best epoch is better on the selection split is saved")
    p.add_argument("--init-weights", metavar="H5",
                   help="start from these weights (classic model_weights.h5 or .weights.h5 of the same "
                        "architecture and --width) instead of random ones: fine-tune a trained model "
                        "with a new warm-up and cosine cycle")
    p.add_argument("--teacher", metavar="H5", nargs="+",
                   help="weights of one or more trained models (classic .h5: of any width; .weights.h5: of "
                        "--width): train on (1 - a) * the label + a * their mean probabilities with flip "
                        "TTA (distillation)")
    p.add_argument("--soft-weight", type=float, default=0.5, metavar="A",
                   help="a, the teacher's share of each training target (default 0.5)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=str(Path.home() / ".cache/fer-server/train"))
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --checkpoint-dir")
    p.add_argument("--export-best", action="store_true",
                   help="do not train: write the model files from the checkpoints in --checkpoint-dir "
                        "(the best epoch, with or without recomputed batch-norm statistics, or with "
                        "--average-last the mean weights, whichever scores best on the selection split)")
    p.add_argument("--precision", choices=("auto", "float32", "mixed_bfloat16"), default="auto",
                   help="auto: mixed_bfloat16 on CPUs with bfloat16 instructions (AMX or AVX512_BF16), "
                        "where it is faster, else float32")
    return p.parse_args(argv)


def cpu_has_bf16():
    """True when /proc/cpuinfo lists ``amx_bf16`` or ``avx512_bf16``.

    Measured on 2-core machines, training images/s float32 -> mixed_bfloat16:
    Xeon with AMX about 1.4x with augmentation; AMD EPYC with AVX512_BF16
    125 -> 318 (2.5x, no augmentation). On a CPU with neither flag (an EPYC
    with only AVX2, say), oneDNN has no bfloat16 kernels and float32 is kept.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def load_weights_or_exit(model, path, width):
    """Load ``path`` (classic ``.h5`` or ``.weights.h5``) into ``model``, or exit with one line
    naming the file, the width and the number of classes when it does not fit."""
    from fer_server.model.files import first_line

    try:
        model.load_weights(str(path))
    except Exception as e:  # noqa: BLE001 - Keras raises several types for a mismatch
        sys.exit(f"error: {path} does not fit a width-{width} model with "
                 f"{model.output_shape[-1]} classes ({first_line(e)})")


def weights_width(path):
    """The width of the ``train.model`` network whose classic-layout ``.h5`` weights are at ``path``
    (filters of ``block1_conv1``), or None when the file is not in that layout."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["block1_conv1/block1_conv1/kernel:0"].shape[-1])
    except (OSError, KeyError):
        return None


def class_weights(labels, num_classes):
    """Per-class loss weights ``(n_max / n_c) ** 0.5``, scaled to mean 1 over the samples.

    The square root softens inverse-frequency weighting so the rare Disgust
    class (1.5% of Training) counts more without dominating the loss.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.sqrt(counts.max() / np.maximum(counts, 1))
    return (w / (w[labels].mean())).astype(np.float32)


def soft_targets(labels, probabilities, weight):
    """Training targets ``(1 - weight) * one_hot(labels) + weight * probabilities``.

    Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in
    a Neural Network"; from a model of the same architecture, "born-again
    networks", Furlanello et al. 2018): trained models' probabilities carry
    which classes a face resembles.

    Args:
        labels: ``(N,)`` int class indices.
        probabilities: ``(N, C)`` float32, rows summing to 1 (a teacher's output).
        weight: in [0, 1].  Up to 0.5 no other class gets a larger target
            than the label.

    Returns:
        ``(N, C)`` float32, each row summing to 1.
    """
    one_hot = np.eye(probabilities.shape[1], dtype=np.float32)[labels]
    return ((1 - weight) * one_hot + weight * probabilities).astype(np.float32)


def make_dataset(images, labels, num_classes, batch_size, augment=None, weights=None, seed=0,
                 targets=None):
    """A ``tf.data`` pipeline of ``(x, y[, w])`` batches.

    ``x`` is ``(B, 48, 48, 1)`` float32 in [0, 1]; ``y`` one-hot float32, or
    the rows of ``targets`` (``(N, num_classes)`` float32) when given; ``w``
    the per-sample loss weight when ``weights`` (per class) is given.
    """
    import tensorflow as tf

    x = images[..., None]
    y = np.eye(num_classes, dtype=np.float32)[labels] if targets is None else targets
    tensors = (x, y) if weights is None else (x, y, weights[labels])
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if augment is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def scale(x, *rest):
        x = tf.cast(x, tf.float32) / 255.0
        if augment is not None:
            x = tf.clip_by_value(augment(x, training=True), 0.0, 1.0)
        return (x, *rest)

    return ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def best_so_far(history_csv, key="val_accuracy"):
    """The best ``key`` in a CSVLogger file, or None when there is none yet."""
    try:
        with open(history_csv, newline="") as f:
            values = [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    except OSError:
        return None
    return max(values) if values else None


def main(argv=None):
    args = parse_args(argv)
    ckpt = Path(args.checkpoint_dir).expanduser()
    backup_dir, best_weights, history_csv = ckpt / "backup", ckpt / "best.weights.h5", ckpt / "history.csv"
    epochs_dir = ckpt / "epochs"  # the last --average-last epochs' weights
    if args.export_best and not best_weights.exists():
        sys.exit(f"error: {best_weights} does not exist; no epoch has finished in {ckpt}")
    if args.init_weights and not Path(args.init_weights).is_file():
        sys.exit(f"error: {args.init_weights}: no such file (--init-weights)")
    for path in args.teacher or ():
        if not Path(path).is_file():
            sys.exit(f"error: {path}: no such file (--teacher)")
    if backup_dir.exists() and not (args.resume or args.export_best):
        sys.exit(f"error: {backup_dir} holds an interrupted run; pass --resume to continue it, "
                 f"or delete {ckpt} to start over")
    if not (args.resume or args.export_best) and ckpt.exists():
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from fer_server.model.files import FER2013_LABELS

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        data, labels = load_dataset(args.data, FER2013_LABELS, classes, val=args.val,
                                    val_fraction=args.val_fraction, seed=args.seed)
    except (DataError, ValueError) as e:
        sys.exit(f"error: {e}")
    sources = split_sources(args.data, args.val, args.val_fraction, args.seed)
    val_split = next(split for split in sources if split != "Training")  # PublicTest or Validation
    if "Training" not in data or val_split not in data or not len(data[val_split][1]):
        sys.exit(f"error: {args.data} needs Training and {val_split} faces")
    (x_train, y_train), (x_val, y_val) = data["Training"], data[val_split]
    print(f"Training: {len(x_train)} faces ({sources['Training']}), {val_split}: {len(x_val)} faces "
          f"({sources[val_split]})", flush=True)

    import keras
    from livelossplot import PlotLossesKeras
    from livelossplot.outputs import MatplotlibPlot

    from fer_server.model.classifier import Classifier
    from fer_server.model.files import save_model
    from train.card import write_model_card
    from train.model import build_augmentation, build_model

    targets = None  # one-hot labels, unless a teacher gives soft targets
    if args.teacher:  # in float32, before the training precision is set
        from train.scoring import predict

        probabilities = 0
        for path in args.teacher:
            width = weights_width(path) or args.width
            teacher = build_model(len(labels), width)
            load_weights_or_exit(teacher, path, width)
            probabilities = probabilities + predict(Classifier(teacher, labels, backend="tf.function"),
                                                    x_train, tta=True) / len(args.teacher)
        targets = soft_targets(y_train, probabilities.astype(np.float32), args.soft_weight)
        print(f"targets: {1 - args.soft_weight:g} x label + {args.soft_weight:g} x the mean of "
              f"{len(args.teacher)} teacher(s) with flip TTA (it agrees with "
              f"{(probabilities.argmax(1) == y_train).mean():.1%} of the Training labels)", flush=True)

    precision = args.precision
    if precision == "auto":
        precision = "mixed_bfloat16" if cpu_has_bf16() else "float32"
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(args.seed)
    num_classes = len(labels)
    print(f"precision: {precision}", flush=True)

    augment = build_augmentation(args.augment)
    train_ds = make_dataset(x_train, y_train, num_classes, args.batch_size, augment=augment,
                            weights=class_weights(y_train, num_classes), seed=args.seed, targets=targets)
    val_ds = make_dataset(x_val, y_val, num_classes, 256)

    steps = int(np.ceil(len(x_train) / args.batch_size))
    warmup = min(2, args.epochs // 10)  # epochs of linear warm-up, then cosine decay to 0
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else args.lr, decay_steps=(args.epochs - warmup) * steps,
        warmup_target=args.lr if warmup else None, warmup_steps=warmup * steps)
    model = build_model(num_classes, args.width)
    if args.init_weights and not args.resume:  # a resumed run restores its own weights
        load_weights_or_exit(model, args.init_weights, args.width)
        print(f"initial weights: {args.init_weights}", flush=True)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
        metrics=["accuracy"])
    print(f"{model.name}: {model.count_params():,} parameters", flush=True)

    class EtaPrinter(keras.callbacks.Callback):
        """One line per epoch: images/s and the time left for the whole run."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()
            self.first = getattr(self, "first", epoch)

        def on_epoch_end(self, epoch, logs=None):
            took = time.perf_counter() - self.start
            left = (args.epochs - epoch - 1) * took
            print(f"epoch {epoch + 1}/{args.epochs}: {took:.0f} s, {len(x_train) / took:.0f} images/s, "
                  f"{val_split} accuracy {logs['val_accuracy']:.4f}, ETA {left / 60:.0f} min", flush=True)

    class SaveLastEpochs(keras.callbacks.Callback):
        """Keep the weights of each of the last ``--average-last`` epochs for averaging."""

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 > args.epochs - args.average_last:
                epochs_dir.mkdir(exist_ok=True)
                self.model.save_weights(str(epochs_dir / f"epoch{epoch + 1:03d}.weights.h5"))

    callbacks = [
        SaveLastEpochs(),  # before the backup: a resumed run does not repeat a backed-up epoch
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        keras.callbacks.ModelCheckpoint(str(best_weights), monitor="val_accuracy", mode="max",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_so_far(history_csv)),
        keras.callbacks.CSVLogger(str(history_csv), append=args.resume),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=args.patience),
        keras.callbacks.TerminateOnNaN(),
        PlotLossesKeras(outputs=[MatplotlibPlot(figpath=str(ckpt / "curves.png"))]),
        EtaPrinter(),
    ]
    if not args.export_best:
        model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, callbacks=callbacks, verbose=2,
                  shuffle=False)  # the dataset shuffles itself

    # Ship the best epoch as a float32 model: the JSON then carries no bfloat16 policy.
    keras.mixed_precision.set_global_policy("float32")
    from train.average import average_weights, recalibrate_batchnorm
    from train.scoring import predict

    # Batch-norm statistics gathered on augmented batches do not fit clean faces. Recomputing them on
    # the clean Training faces raised PublicTest accuracy from 0.637 to 0.667 for one checkpoint, and from
    # 0.661 to 0.683 for the best epoch of a 12-epoch warm restart: as much as averaging weights gave.
    clean_train = x_train[..., None].astype(np.float32) / 255.0
    candidates = []  # (description, model)
    final = build_model(num_classes, args.width)
    final.load_weights(str(best_weights))
    candidates.append(("the best epoch", final))
    recalibrated = build_model(num_classes, args.width)
    recalibrated.load_weights(str(best_weights))
    recalibrate_batchnorm(recalibrated, clean_train)
    candidates.append(("the best epoch, batch-norm statistics recomputed", recalibrated))
    snapshots = sorted(epochs_dir.glob("epoch*.weights.h5"))[-args.average_last:] if args.average_last else []
    if args.average_last and len(snapshots) < 2:
        print(f"no weight averaging: {len(snapshots)} of the last {args.average_last} epochs' weights "
              f"in {epochs_dir} (training stopped early?)")
    if len(snapshots) >= 2:
        averaged = build_model(num_classes, args.width)
        average_weights(averaged, snapshots)
        recalibrate_batchnorm(averaged, clean_train)
        span = (f"{len(snapshots)} epochs, {snapshots[0].name[5:8].lstrip('0')} "
                f"to {snapshots[-1].name[5:8].lstrip('0')}")
        candidates.append((f"the mean of the weights of {span}, batch-norm statistics recomputed", averaged))
    scores = [float((predict(Classifier(m, labels, backend="tf.function"), x_val).argmax(1) == y_val).mean())
              for _, m in candidates]
    for (name, _), score in zip(candidates, scores):
        print(f"{val_split} accuracy of {name}: {score:.4f}")
    pick = int(np.argmax(scores))  # the first of equals: the plainer model
    final = candidates[pick][1]
    weights_note = f"{candidates[pick][0]} ({val_split} {scores[pick]:.4f}; " + "; ".join(
        f"{name}: {score:.4f}" for i, ((name, _), score) in enumerate(zip(candidates, scores)) if i != pick) + ")"
    save_model(final, out / "model.json", out / "model_weights.h5", labels)
    for name in ("history.csv", "curves.png"):
        if (ckpt / name).exists():
            shutil.copy(ckpt / name, out / f"training_{name}")
    card = write_model_card(out / "MODEL_CARD.md", Classifier(final, labels), x_val, y_val, args,
                            history_csv, precision, weights_note, sources=sources)
    print(f"{val_split} accuracy of the saved model: {card['accuracy']:.4f} "
          f"({card['tta']['accuracy']:.4f} with flip TTA), macro-F1 {card['macro_f1']:.4f}")
    print(f"wrote {out / 'model.json'}, {out / 'model_weights.h5'} and {out / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
