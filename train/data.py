"""Loading FER2013 from the Kaggle ``fer2013.csv`` layout.

The CSV has the header ``emotion,pixels,Usage``; ``pixels`` holds 2304
space-separated grey levels (a row-major 48x48 image), ``emotion`` the class
index in FER2013 order, and ``Usage`` the split: ``Training``,
``PublicTest`` or ``PrivateTest`` (Goodfellow et al. 2013, "Challenges in
Representation Learning").  The file may be gzip-compressed.

Also the image-folder layout (``train/<class>/*.png``), whose selection split
is a ``--val`` folder or a seeded, stratified part of ``train/``: never a
``test/`` folder, which in Kaggle's copy mixes PublicTest and PrivateTest.
"""
import csv
import gzip
import io
import logging
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


#: FER+ vote columns of ``fer2013new.csv`` (Barsoum et al. 2016: neutral,
#: happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF)
#: for the FER2013 classes Angry ... Neutral; contempt, unknown and NF are dropped.
FERPLUS_COLUMNS = (4, 5, 6, 1, 3, 2, 0)


def load_ferplus_votes(path, split, expected=None):
    """The FER+ vote distribution over the 7 FER2013 classes for one split's rows.

    Args:
        path: ``fer2013new.csv(.gz)`` (header ``Usage,Image name,neutral,...,NF``),
            rows in FER2013's order.
        split: ``"Training"`` or ``"PublicTest"``.
        expected: the number of rows the split must have (FER2013's), or None.

    Returns:
        ``(N, 7)`` float32 rows summing to 1 in FER2013 class order; a row
        with no vote for any of the 7 classes is all 0.

    Raises:
        DataError: a missing file, a short row, a non-numeric vote, or
            ``expected`` not matching the split's row count.
    """
    rows = []
    with _open_text(path) as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            if row and row[0] == split:
                try:
                    rows.append([float(v) for v in row[2:12]])
                except ValueError:
                    raise DataError(f"{path}, line {reader.line_num}: non-numeric vote") from None
                if len(rows[-1]) != 10:
                    raise DataError(f"{path}, line {reader.line_num}: {len(rows[-1])} vote columns, expected 10")
    if expected is not None and len(rows) != expected:
        raise DataError(f"{path}: {len(rows)} {split} rows, expected {expected}")
    seven = np.asarray(rows, np.float32).reshape(-1, 10)[:, FERPLUS_COLUMNS]
    total = seven.sum(1, keepdims=True)
    return np.divide(seven, total, out=np.zeros_like(seven), where=total > 0)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: The selection split of the image-folder layout: ``--val`` or a part carved from ``train/``.
VALIDATION = "Validation"
#: Share of each class of ``train/`` set aside for selection when no ``--val`` folder is given.
VAL_FRACTION = 0.1

log = logging.getLogger(__name__)


def read_class_folders(folder, labels, required=True):
    """Read ``folder/<class>/*.png|jpg|jpeg|bmp`` for each class in ``labels``.

    Args:
        folder: a folder with one sub-folder per class; names match ``labels``
            case-insensitively (Kaggle's are lower case).  Folders of other
            classes are ignored.
        labels: class names in label order.
        required: every class must have a non-empty folder (else a missing
            class folder is skipped).

    Returns:
        ``(images, labels)``: ``(N, 48, 48)`` uint8 grey levels (converted to
        grayscale and resized with INTER_AREA where needed) and ``(N,)``
        int64 class indices, class by class, files in name order.

    Raises:
        DataError: a required class folder missing, a class folder without
            images, an image that cannot be read, or no image at all.
    """
    import cv2

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    images, targets = [], []
    for index, name in enumerate(labels):
        class_dir = by_name.get(name.lower())
        if class_dir is None:
            if required:
                raise DataError(f"{folder}: no folder for class {name!r}")
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
    if not images:
        raise DataError(f"{folder}: no class folder of {', '.join(labels)}")
    return np.stack(images), np.array(targets, dtype=np.int64)


def carve_validation(images, labels, fraction=VAL_FRACTION, seed=0):
    """Split off a stratified, seeded share of each class for selection.

    Of a class with ``n`` images, ``k = min(n - 1, max(1, round(fraction * n)))``
    go to the validation part (none when ``n`` is 1 or ``fraction`` is 0):
    every class keeps at least one training image and, when it has two,
    gives at least one for selection.  Which ones is drawn with
    ``numpy.random.default_rng(seed)``, class by class in label order.

    Args:
        images: ``(N, 48, 48)`` uint8.
        labels: ``(N,)`` int64 class indices.
        fraction: in [0, 1).
        seed: the same seed gives the same split.

    Returns:
        ``((train images, train labels), (val images, val labels))``, each
        part in the original order.

    Raises:
        ValueError: ``fraction`` outside [0, 1).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        k = 0 if fraction == 0 else min(n - 1, max(1, round(fraction * n)))
        val[rng.permutation(members)[:k]] = True
    return (images[~val], labels[~val]), (images[val], labels[val])


def load_image_folders(root, labels, val=None, val_fraction=VAL_FRACTION, seed=0):
    """Read the image-folder layout: ``root/train/<class>/*.png|jpg`` (Kaggle's folder copy of FER2013).

    ``train/`` is the Training split.  The selection split (``VALIDATION``)
    is the ``val`` folder when given, else a stratified ``val_fraction`` of
    ``train/`` (``carve_validation``, seeded).  A ``root/test/`` folder is
    never read: Kaggle's puts PublicTest and PrivateTest together there, so
    selecting on it would leak the final test faces into model selection; a
    warning says so when it is present.

    Args:
        root: the folder holding ``train/``.
        labels: class names in label order; folder names match them
            case-insensitively.  Every class needs a non-empty ``train/``
            folder; ``val`` may lack some classes.
        val: a folder of ``<class>/`` folders to select on, or None.
        val_fraction: share of each ``train/`` class carved off when ``val``
            is None.
        seed: seed of that carve.

    Returns:
        ``{"Training": (images, labels), "Validation": (images, labels)}``
        like ``load_fer2013_csv``: ``(N, 48, 48)`` uint8 and ``(N,)`` int64.

    Raises:
        DataError: no ``train/`` folder, a class folder missing from
            ``train/`` or empty, an image that cannot be read, a ``val``
            folder that is missing or holds no class folder.
    """
    root = Path(root)
    if not (root / "train").is_dir():
        raise DataError(f"{root}: expected a train/ folder with one folder per class")
    if (root / "test").is_dir():
        log.warning("%s: not used for selection (Kaggle's test/ holds PublicTest and PrivateTest together); "
                    "selecting on %s", root / "test", val or f"{val_fraction:.0%} of {root / 'train'}")
    train = read_class_folders(root / "train", labels)
    if val is not None:
        return {"Training": train, VALIDATION: read_class_folders(val, labels, required=False)}
    train, carved = carve_validation(*train, fraction=val_fraction, seed=seed)
    return {"Training": train, VALIDATION: carved}


def split_sources(path, val=None, val_fraction=VAL_FRACTION, seed=0):
    """Where each split of ``load_dataset(path, ...)`` comes from, in words for the model card.

    Returns:
        ``{"Training": text, selection split name: text}``; the selection
        split is ``PublicTest`` for a CSV and ``VALIDATION`` for folders.
    """
    path = Path(path)
    if not path.is_dir():
        return {"Training": f"the Training rows of `{path.name}`",
                "PublicTest": f"the PublicTest rows of `{path.name}`"}
    train = f"`{path.name}/train/`"
    if val is not None:
        return {"Training": f"all of {train}", VALIDATION: f"the folder `{Path(val).name}/` (--val)"}
    return {"Training": f"{train} less the validation part",
            VALIDATION: f"{val_fraction:.0%} of each class of {train}, drawn with seed {seed} "
                        f"(stratified; no --val folder given)"}


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


def load_dataset(path, all_labels, classes=None, val=None, val_fraction=VAL_FRACTION, seed=0):
    """Load a FER2013 CSV (plain or .gz) or an image-folder tree, optionally a subset of classes.

    Args:
        path: the CSV, or the image-folder root (see ``load_image_folders``).
        all_labels: the class names of the data, in label order.
        classes: names to keep, in output order, or None for all.
        val, val_fraction, seed: the image-folder selection split (see
            ``load_image_folders``); ``val`` is refused for a CSV, whose
            selection split is PublicTest.

    Returns:
        ``(data, labels)``: ``{split: (images, labels)}`` and the class names
        in label order (``classes`` when given, else ``all_labels``).  A CSV
        gives its Usage splits; folders give ``Training`` and ``Validation``.

    Raises:
        DataError: as the loaders do, or ``val`` given with a CSV.
    """
    path = Path(path)
    if path.is_dir():
        data = load_image_folders(path, all_labels, val, val_fraction, seed)
    else:
        if val is not None:
            raise DataError(f"{path}: --val is for the image-folder layout; a CSV selects on its PublicTest rows")
        data = load_fer2013_csv(path, len(all_labels))
    if classes:
        return select_classes(data, all_labels, classes), tuple(
            next(name for name in all_labels if name.lower() == c.lower()) for c in classes)
    return data, tuple(all_labels)
