"""Evaluate the model on labelled image folders, through the server's own face search.

    python -m train.evaluate --data FOLDER [--crops] [--json]
    python -m train.evaluate --manifest LIST.csv [--crops] [--json]

``FOLDER`` holds ``FOLDER/<Label>/<image>`` with each ``Label`` one of the
model's class names (matched case-insensitively); a manifest is a CSV with
``label`` and ``relpath`` columns, paths relative to the manifest's folder
(``--root`` overrides it).  Images are read with ``web.uploads.decode_image``, as
``/api/predict`` reads an upload.  A whole photo goes through
``FramePipeline.faces_in_image`` of ``builders.build_pipeline(config,
for_images=True)`` (the ``/api/predict`` path) and the largest face found is
its answer; a photo where no face is found counts as wrong in ``accuracy``
and is left out of ``accuracy_found``.  ``--crops`` classifies each image as
it is, a tight face crop squeezed to the model's input.

It prints n, faces found, both accuracies, macro-F1 (no face counting as a
miss), per-class precision/recall/F1, the predicted-label distribution next
to the true one and the confusion matrix, saves the confusion matrix (with a
``(no face)`` column) as a PNG and with ``--json`` ends with one JSON line.
An unreadable image is counted and named, and left out of every figure.
"""
import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from train.data import DataError
from train.scoring import confusion_lines, metrics, write_outputs

#: File name endings read as images in a folder (others are ignored).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
#: Column name for the photos where no face was found.
NO_FACE = "(no face)"


def wants_folders(argv):
    """True when ``train.evaluate``'s arguments ask for a folder or manifest evaluation.

    Args:
        argv: the command-line arguments (without the program name).

    Returns:
        True for ``--manifest`` or a ``--data`` that is a directory.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--data")
    p.add_argument("--manifest")
    known, _ = p.parse_known_args(argv)
    return bool(known.manifest) or (known.data is not None and Path(known.data).is_dir())


def _class_index(name, labels, where):
    lookup = {label.lower(): i for i, label in enumerate(labels)}
    if name.strip().lower() not in lookup:
        raise DataError(f"{where}: class {name!r} is not one the model knows ({', '.join(labels)})")
    return lookup[name.strip().lower()]


def load_folder(root, labels):
    """List the images of ``root/<Label>/<image>``.

    Args:
        root: the folder; each subfolder is named after a class of ``labels``
            (case-insensitive).  Files at the top level are ignored.
        labels: the model's class names, index order.

    Returns:
        A sorted list of ``(path, class index)``.

    Raises:
        DataError: ``root`` is missing or not a folder, a subfolder is not a
            class name of ``labels``, or there is no image at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        index = _class_index(folder.name, labels, folder)
        items += [(f, index) for f in sorted(folder.iterdir())
                  if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DataError(f"{root}: no images in <Label>/ subfolders ({', '.join(labels)})")
    return items


def load_manifest(path, labels, root=None):
    """List the images of a CSV manifest with ``label`` and ``relpath`` columns.

    Args:
        path: the CSV file (other columns are ignored).
        labels: the model's class names, index order.
        root: the folder ``relpath`` is relative to (default: the manifest's).

    Returns:
        A list of ``(path, class index)`` in the manifest's order (a listed
        file that does not exist is kept and later counted as unreadable).

    Raises:
        DataError: missing file, missing column, a label the model does not
            know (naming the line) or no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    root = Path(root) if root else path.parent
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"label", "relpath"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected label,relpath")
        items = [(root / row["relpath"], _class_index(row["label"], labels, f"{path}, line {reader.line_num}"))
                 for row in reader]
    if not items:
        raise DataError(f"{path}: no rows")
    return items


def classify_items(pipeline, items, crops=False, max_pixels=40_000_000):
    """Classify each image as ``/api/predict`` would (largest face) or as a tight crop.

    Args:
        pipeline: a ``vision.pipeline.FramePipeline`` built ``for_images``.
        items: ``(path, class index)`` pairs.
        crops: classify the whole image as the face instead of searching it.
        max_pixels: ``decode_image``'s limit.

    Returns:
        ``(probs, y_true, found, unreadable)``: ``(N, C)`` float32
        probabilities (zeros where no face was found), ``(N,)`` int64 true
        classes, ``(N,)`` bool face found, all over the readable images in
        ``items`` order; and ``[(path, reason)]`` for the unreadable ones.
    """
    from fer_server.web.uploads import ImageError, decode_image
    from fer_server.vision.frames import crop_faces, grayscale

    classifier = pipeline.classifier
    probs, y_true, found, unreadable = [], [], [], []
    for path, index in items:
        try:
            image = decode_image(Path(path).read_bytes(), max_pixels)
        except (OSError, ImageError) as e:
            unreadable.append((str(path), getattr(e, "strerror", None) or str(e)))
            continue
        if crops:
            gray = grayscale(image)
            box = np.array([[0, 0, gray.shape[1], gray.shape[0]]])
            p = classifier.predict(crop_faces(gray, box, classifier.input_size, 0.0))[0]
        else:
            faces = pipeline.faces_in_image(image)
            p = None
            if faces:
                best = max(faces, key=lambda face: face.box[2] * face.box[3])
                p = np.array([best.probabilities[name] for name in classifier.labels], np.float32)
        found.append(p is not None)
        probs.append(p if p is not None else np.zeros(len(classifier.labels), np.float32))
        y_true.append(index)
    k = len(classifier.labels)
    return (np.asarray(probs, np.float32).reshape(-1, k), np.asarray(y_true, np.int64),
            np.asarray(found, bool), unreadable)


def score(probs, y_true, found, labels, temperature=None):
    """The figures of a folder evaluation.

    Args:
        probs: ``(N, C)`` probabilities (or any scores whose argmax is the answer).
        y_true: ``(N,)`` int class indices.
        found: ``(N,)`` bool, False where no face was found (a wrong answer).
        labels: the ``C`` class names.
        temperature: the softmax temperature ``probs`` were served with; when
            given, the result also has ``ece`` (expected calibration error,
            15 bins, Guo et al. 2017) and ``mean_confidence`` over the faces
            found, and ``ece_untempered`` of the same probabilities with the
            temperature undone (``softmax(T * log p)``).

    Returns:
        ``train.evaluate.metrics`` over the ``C + 1`` classes ``labels`` and
        ``"(no face)"`` (so recall counts a missed face as a miss), with
        ``macro_f1`` over the ``C`` real classes only, plus ``found`` (count),
        ``accuracy_found`` (on the faces found), ``macro_f1_found``, and
        ``distribution``: ``{class: {"true": n, "predicted": n}}`` including
        ``"(no face)"``.
    """
    k = len(labels)
    y_pred = np.where(found, np.asarray(probs).argmax(1) if len(probs) else 0, k).astype(np.int64)
    result = metrics(y_true, y_pred, list(labels) + [NO_FACE])
    result["macro_f1"] *= (k + 1) / k  # the no-face column has no true member, so its F1 is 0
    on_found = metrics(y_true[found], y_pred[found], list(labels))
    result.update(found=int(found.sum()), accuracy_found=on_found["accuracy"], macro_f1_found=on_found["macro_f1"])
    true_counts = np.bincount(y_true, minlength=k + 1)
    pred_counts = np.bincount(y_pred, minlength=k + 1)
    result["distribution"] = {name: {"true": int(true_counts[i]), "predicted": int(pred_counts[i])}
                              for i, name in enumerate(list(labels) + [NO_FACE])}
    if temperature is not None and found.any():
        from fer_server.model.classifier import apply_temperature
        from train.scoring import expected_calibration_error

        served = np.asarray(probs)[found]
        result.update(ece=expected_calibration_error(served, y_true[found]),
                      ece_untempered=expected_calibration_error(apply_temperature(served, 1 / temperature),
                                                                y_true[found]),
                      mean_confidence=float(served.max(1).mean()), temperature=temperature)
    return result


def format_folder_report(result, labels):
    """The human-readable report of ``score``'s result (one string, several lines)."""
    n = result["n"]
    lines = [f"n={n}  faces found={result['found']} ({result['found'] / max(1, n):.1%})  "
             f"accuracy={result['accuracy']:.4f} (no face = wrong)  on found faces={result['accuracy_found']:.4f}  "
             f"macro-F1={result['macro_f1']:.4f} (on found faces {result['macro_f1_found']:.4f})"]
    if "ece" in result:
        lines.append(f"calibration on found faces: ECE {result['ece']:.4f} with T={result['temperature']:g} "
                     f"({result['ece_untempered']:.4f} with T=1), mean confidence {result['mean_confidence']:.3f}")
    lines += ["",
             f"{'class':10s}{'precision':>10s}{'recall':>10s}{'F1':>10s}{'true':>8s}{'predicted':>11s}"]
    for name in list(labels) + [NO_FACE]:
        c, d = result["per_class"][name], result["distribution"][name]
        lines.append(f"{name:10s}{c['precision']:10.3f}{c['recall']:10.3f}{c['f1']:10.3f}"
                     f"{d['true']:8d}{d['predicted']:11d}")
    return "\n".join(lines + confusion_lines(result["confusion"], labels, list(labels) + [NO_FACE]))


def main(argv=None):
    """Command line: see the module docstring; exits non-zero with one message on bad input."""
    from fer_server.config import BACKENDS, Config

    defaults = Config()
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="folder of <Label>/<image>")
    source.add_argument("--manifest", help="CSV with label,relpath columns")
    p.add_argument("--root", help="folder the manifest's relpaths start from (default: the manifest's)")
    p.add_argument("--crops", action="store_true", help="the images are tight face crops: classify them as they are")
    p.add_argument("--model", default=str(defaults.model_path))
    p.add_argument("--weights", help="classic HDF5 weights of a JSON --model (default: model_weights.h5 beside "
                                     "it); none for a whole-model .h5/.hdf5/.keras")
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                   help="inference path (default: the server's, %(default)s)")
    p.add_argument("--image-pad", type=float, default=defaults.image_pad,
                   help="Config.image_pad for the face search (default: the server's, %(default)s)")
    p.add_argument("--image-min-side", type=int, default=defaults.image_min_side_px,
                   help="Config.image_min_side_px: smaller images are enlarged for the face search "
                        "(default: the server's, %(default)s)")
    p.add_argument("--crop-margin", type=float, default=defaults.crop_margin,
                   help="Config.crop_margin (default: the server's, %(default)s)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--predictions", help="write path,true,predicted,confidence per readable image to this CSV "
                                         "(predicted '(no face)' where none was found)")
    p.add_argument("--confusion-png", help="where to save the confusion matrix (default: confusion_<folder>.png)")
    args = p.parse_args(argv)
    if args.image_pad < 0:
        p.error(f"--image-pad must be >= 0, got {args.image_pad}")
    if args.image_min_side < 0:
        p.error(f"--image-min-side must be >= 0, got {args.image_min_side}")

    from fer_server.builders import build_classifier, build_pipeline
    from fer_server.model.files import ModelLoadError

    config = replace(defaults, model_path=Path(args.model), weights_path=Path(args.weights) if args.weights else None,
                     backend=args.backend,
                     image_pad=args.image_pad, image_min_side_px=args.image_min_side, crop_margin=args.crop_margin)
    try:
        classifier = build_classifier(config)
        labels = classifier.labels
        items = (load_folder(args.data, labels) if args.data
                 else load_manifest(args.manifest, labels, args.root))
    except (DataError, ModelLoadError) as e:
        sys.exit(f"error: {e}")
    pipeline = build_pipeline(config, classifier, for_images=True)
    probs, y_true, found, unreadable = classify_items(pipeline, items, args.crops, config.max_image_pixels)
    for path, reason in unreadable:
        print(f"unreadable: {path}: {reason}")
    if len(y_true) == 0:
        sys.exit(f"error: none of the {len(items)} images could be read")
    result = score(probs, y_true, found, labels, temperature=classifier.temperature)
    name = Path(args.data or args.manifest).stem or "data"
    result.update(data=str(args.data or args.manifest), mode="crops" if args.crops else "photos",
                  image_pad=args.image_pad, image_min_side_px=args.image_min_side, crop_margin=args.crop_margin,
                  model=str(args.model),
                  unreadable=len(unreadable), unreadable_files=[path for path, _ in unreadable])
    print(format_folder_report(result, labels))
    if args.predictions:
        bad = {path for path, _ in unreadable}
        paths = [str(path) for path, _ in items if str(path) not in bad]
        with open(args.predictions, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["path", "true", "predicted", "confidence"])
            for path, t, ok, q in zip(paths, y_true, found, probs):
                out.writerow([path, labels[t], labels[int(q.argmax())] if ok else NO_FACE,
                              round(float(q.max()), 4) if ok else ""])
        print(f"predictions saved to {args.predictions}")
    if unreadable:
        print(f"{len(unreadable)} unreadable image(s) left out")
    png = args.confusion_png or f"confusion_{name}{'_crops' if args.crops else ''}.png"
    write_outputs(result, list(labels) + [NO_FACE], png,
                  f"{name}{' (crops)' if args.crops else ''}: accuracy {result['accuracy']:.1%}", args.json)


if __name__ == "__main__":
    main()
