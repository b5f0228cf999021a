"""Files written so that no reader sees half of one: the bytes go to a hidden
name beside the final one, which is then renamed into place (``os.replace``,
atomic on one file system).  Used for the model files, the TensorFlow Lite
cache, and the analysis CSVs, videos and records.
"""
import os
from pathlib import Path


def temporary_path(path):
    """The hidden name a write of ``path`` goes to first: ``.<stem>.partial<pid><suffix>``.

    The suffix is kept, for writers that choose the format by it (OpenCV's
    ``VideoWriter``).
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.partial{os.getpid()}{path.suffix}")


def write_atomic(path, write):
    """Call ``write(tmp)`` with the temporary path, then rename it to ``path``.

    Raises:
        Whatever ``write`` or the rename raises (``OSError``); the temporary
        file is removed in every case.
    """
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
