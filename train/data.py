"""Loading FER2013 from the Kaggle ``fer2013.csv`` layout.

The CSV has the header ``emotion,pixels,Usage``; ``pixels`` holds 2304
space-separated grey levels (a row-major 48x48 image), ``emotion`` the class
index in FER2013 order, and ``Usage`` the split: ``Training``,
``PublicTest`` or ``PrivateTest`` (Goodfellow et al. 2013, "Challenges in
Representation Learning").  The file may be gzip-compressed.
"""
import csv
import gzip
import io
from pathlib import Path

import numpy as np

SIDE = 48
SPLITS = ("Training", "PublicTest", "PrivateTest")


class DataError(ValueError):
    """A data set file is missing or malformed; the message names the file and row."""


def _open_text(path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def load_fer2013_csv(path, num_classes=7):
    """Read every split of a FER2013 CSV.

    Args:
        path: ``fer2013.csv`` or ``fer2013.csv.gz``.
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
        ``{split: (images, labels)}`` for each split present, with images
        ``(N, 48, 48)`` uint8 grey levels and labels ``(N,)`` int64.

    Raises:
        DataError: missing file, missing columns, a row whose pixel count
            is not 2304, or a non-numeric or out-of-range value; the
            message names the file and the 1-based line number.
    """
    images = {s: [] for s in SPLITS}
    labels = {s: [] for s in SPLITS}
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels", "Usage"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                            "expected the Kaggle header emotion,pixels,Usage")
        for row in reader:
            line = reader.line_num
            split = row["Usage"]
            if split not in images:
                raise DataError(f"{path}, line {line}: unknown Usage {split!r}; "
                                f"expected one of {', '.join(SPLITS)}")
            try:
                label = int(row["emotion"])
                pixels = np.array(row["pixels"].split(), dtype=np.int64)
            except (ValueError, AttributeError):
                raise DataError(f"{path}, line {line}: non-numeric emotion or pixel value") from None
            if pixels.size != SIDE * SIDE:
                raise DataError(f"{path}, line {line}: {pixels.size} pixels, expected {SIDE * SIDE}")
            if not 0 <= label < num_classes or pixels.min() < 0 or pixels.max() > 255:
                raise DataError(f"{path}, line {line}: emotion must be 0-{num_classes - 1} "
                                "and pixels 0-255")
            images[split].append(pixels.astype(np.uint8).reshape(SIDE, SIDE))
            labels[split].append(label)
    return {s: (np.stack(images[s]), np.array(labels[s], dtype=np.int64))
            for s in SPLITS if images[s]}


#: Kaggle's image-folder copy of FER2013: ``train/`` and ``test/``, one folder per class.
FOLDER_SPLITS = {"train": "Training", "test": "PublicTest"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_image_folders(root, labels):
    """Read the Kaggle image-folder layout ``root/{train,test}/<class>/*.png|jpg``.

    Args:
        root: the folder holding ``train/`` and ``test/`` (``test`` is used as
            PublicTest, the validation split).
        labels: class names in label order; folder names match them
            case-insensitively (Kaggle's are lower case).  Folders of other
            classes are ignored.

    Returns:
        ``{split: (images, labels)}`` like ``load_fer2013_csv``; images are
        converted to grayscale and resized to 48x48 where needed.

    Raises:
        DataError: no ``train/`` folder, a class folder missing from
            ``train/`` or empty, or an image that cannot be read.
    """
    import cv2

    root = Path(root)
    if not (root / "train").is_dir():
        raise DataError(f"{root}: expected a train/ folder with one folder per class")
    data = {}
    for folder, split in FOLDER_SPLITS.items():
        if not (root / folder).is_dir():
            continue
        by_name = {p.name.lower(): p for p in (root / folder).iterdir() if p.is_dir()}
        images, targets = [], []
        for index, name in enumerate(labels):
            class_dir = by_name.get(name.lower())
            if class_dir is None:
                if folder == "train":
                    raise DataError(f"{root / folder}: no folder for class {name!r}")
                continue
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{class_dir}: no images (.png, .jpg, .jpeg, .bmp)")
            for f in files:
                image = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    raise DataError(f"{f}: cannot be read as an image")
                if image.shape != (SIDE, SIDE):
                    image = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
                images.append(image)
                targets.append(index)
        if images:
            data[split] = (np.stack(images), np.array(targets, dtype=np.int64))
    return data


def select_classes(data, all_labels, classes):
    """Keep only ``classes`` (names from ``all_labels``) and renumber them 0..k-1 in that order.

    Raises:
        DataError: an unknown or repeated class name.
    """
    lookup = {name.lower(): i for i, name in enumerate(all_labels)}
    unknown = [c for c in classes if c.lower() not in lookup]
    if unknown:
        raise DataError(f"unknown class name(s) {', '.join(unknown)}; choose from {', '.join(all_labels)}")
    if len({c.lower() for c in classes}) != len(classes):
        raise DataError(f"a class is named twice in {', '.join(classes)}")
    old = [lookup[c.lower()] for c in classes]
    remap = np.full(len(all_labels), -1, np.int64)
    remap[old] = np.arange(len(old))
    out = {}
    for split, (images, labels) in data.items():
        keep = remap[labels] >= 0
        out[split] = (images[keep], remap[labels][keep])
    return out


def load_dataset(path, all_labels, classes=None):
    """Load a FER2013 CSV (plain or .gz) or an image-folder tree, optionally a subset of classes.

    Returns:
        ``(data, labels)``: ``{split: (images, labels)}`` and the class names
        in label order (``classes`` when given, else ``all_labels``).

    Raises:
        DataError: as the loaders do.
    """
    path = Path(path)
    data = load_image_folders(path, all_labels) if path.is_dir() else load_fer2013_csv(path, len(all_labels))
    if classes:
        return select_classes(data, all_labels, classes), tuple(
            next(name for name in all_labels if name.lower() == c.lower()) for c in classes)
    return data, tuple(all_labels)
