"""The per-face CSV that offline analysis, batch jobs and recording all write: its columns,
one face's row, and the check that an output folder is writable."""
import os
from pathlib import Path


#: The CSV columns: seconds and pixels, then one probability column per class.
CSV_COLUMNS = ("frame", "time_s", "face_id", "x", "y", "w", "h", "label", "confidence")


def csv_header(labels):
    """``CSV_COLUMNS`` plus one lower-case probability column per class name in ``labels``."""
    return CSV_COLUMNS + tuple(name.lower() for name in labels)


def face_row(frame, time_s, face, labels):
    """One CSV row (``csv_header``'s columns) of one ``vision.frames.Face``.

    Args:
        frame: frame number (int).
        time_s: seconds into the video (rounded to ms).
        face: the ``vision.frames.Face``.
        labels: class names, in column order.

    Returns:
        A list: ints for the frame, id and box, floats for time (3 places)
        and confidence and probabilities (4 places), the label string.
    """
    return [frame, round(time_s, 3), face.id, *(int(v) for v in face.box), face.label,
            round(float(face.confidence), 4), *(round(float(face.probabilities[name]), 4) for name in labels)]


def ensure_writable_folder(folder):
    """Create ``folder`` (and its parents) if needed and check that a file can be written in it.

    Raises:
        OSError: whose ``strerror`` says why (the caller names the folder's role).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test.partial{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
