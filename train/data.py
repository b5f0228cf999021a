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
