"""Batch jobs: finding the videos, planning each one's outputs, resumable records, and
the per-video work (``process_video``) that every engine runs.

A record ``OUT/REL/.name.csv.done.json`` (the input's size and modification
time and the summary row) is renamed into place after a video's outputs; a
rerun skips videos whose record matches.  See ``offline.batch``.
"""
import csv
import glob
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fer_server.atomic import write_atomic

#: File name extensions (lower case) taken as videos; other files are counted and ignored.
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv",
                              ".flv", ".ts", ".mts", ".3gp", ".ogv"})
SUMMARY_NAME = "summary.csv"
RECORD_SUFFIX = ".done.json"
#: The summary's leading columns; one ``share_<label>`` column per class and then
#: ``mean_confidence`` and ``seconds`` follow (see ``summary_columns``).
SUMMARY_HEAD = ("video", "status", "error", "frames", "duration_s", "faces", "frames_with_face")
_PARTIAL = re.compile(r"^\..*\.partial\d+(\.[^.]*)?$")
_GLOB_MAGIC = re.compile(r"[*?[]")


class BatchInputError(ValueError):
    """Bad input found before any work: one sentence for the user, exit code 2."""


@dataclass(frozen=True)
class Job:
    """One video to analyse; paths are absolute strings (picklable, JSON-ready).

    Attributes:
        video: path relative to the source root, with ``/`` separators.
        source: the input file.
        csv_path, annotated, record: the outputs (``annotated`` is None when
            no annotated video is asked for).
        size: input size in bytes (-1 if it cannot be read).
        mtime_ns: input modification time in nanoseconds.
    """

    video: str
    source: str
    csv_path: str
    annotated: str
    record: str
    size: int
    mtime_ns: int


def read_labels(model_path):
    """The class names of ``model.json`` (its ``class_names``, else FER2013's), without TensorFlow.

    Raises:
        BatchInputError: the file cannot be read or is not JSON.
    """
    from fer_server.model.files import FER2013_LABELS, LABELS_KEY

    try:
        config = json.loads(Path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BatchInputError(f"cannot read the model architecture {model_path} ({e})") from None
    return tuple(config.get(LABELS_KEY) or FER2013_LABELS)


def summary_columns(labels):
    """The ``summary.csv`` header for these class names."""
    return SUMMARY_HEAD + tuple(f"share_{name.lower()}" for name in labels) + ("mean_confidence", "seconds")


def find_videos(source, exclude=()):
    """The video files a ``--source`` names.

    Args:
        source: a folder (searched recursively), a glob pattern (``**``
            allowed), a text file with one path per line (relative lines are
            relative to the file's folder; blank lines and ``#`` comments are
            ignored), or a single video file.
        exclude: folders whose contents are never taken (the output folders).

    Returns:
        ``(root, videos, ignored)``: the folder output paths are relative to,
        the sorted absolute ``Path`` s of the videos (by extension), and how
        many other files were found and ignored.

    Raises:
        BatchInputError: the source does not exist or holds no video file.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        root, found = path.resolve(), [p for p in path.resolve().rglob("*") if p.is_file()]
    elif path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
        root, found = path.resolve().parent, [path.resolve()]
    elif path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise BatchInputError(f"cannot read the list of videos {path} ({e})") from None
        base = path.resolve().parent
        found = [(base / line.strip()).resolve() for line in lines if line.strip() and not line.startswith("#")]
        root = Path(os.path.commonpath([p.parent for p in found])) if found else base
    elif _GLOB_MAGIC.search(text):
        found = [Path(p).resolve() for p in glob.glob(os.path.expanduser(text), recursive=True)]
        found = [p for p in found if p.is_file()]
        prefix = Path(os.path.expanduser(text[:_GLOB_MAGIC.search(text).start()]))
        root = (prefix if str(prefix).endswith(os.sep) or prefix.is_dir() else prefix.parent).resolve()
    else:
        raise BatchInputError(f"the source {text} is not a folder, a glob, a list file or a video")
    excluded = [Path(e).resolve() for e in exclude if e]
    found = [p for p in found if not any(p.is_relative_to(e) for e in excluded)]
    videos = sorted(p for p in found if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise BatchInputError(f"no video file ({', '.join(sorted(VIDEO_EXTENSIONS))}) in {text}")
    return root, videos, len(found) - len(videos)


def plan_jobs(root, videos, csv_dir, output_dir=None):
    """One ``Job`` per video, with output names under ``csv_dir`` and ``output_dir``.

    A video outside ``root`` (a list naming files elsewhere) keeps its path
    below the file system root.
    """
    csv_dir = Path(csv_dir).resolve()
    rels = []
    for video in videos:
        try:
            rels.append(video.relative_to(root))
        except ValueError:
            rels.append(Path(*video.parts[1:]))
    stems = Counter(rel.with_suffix("") for rel in rels)
    stems[Path(SUMMARY_NAME).with_suffix("")] += 1  # never write a video's CSV over the summary
    jobs = []
    for video, rel in zip(videos, rels):
        stem = rel if stems[rel.with_suffix("")] > 1 else rel.with_suffix("")
        csv_path = csv_dir / f"{stem}.csv"
        try:
            stat = video.stat()
            size, mtime_ns = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime_ns = -1, 0
        jobs.append(Job(video=rel.as_posix(), source=str(video), csv_path=str(csv_path),
                        annotated=str(Path(output_dir).resolve() / f"{stem}.mp4") if output_dir else None,
                        record=str(csv_path.with_name(f".{csv_path.name}{RECORD_SUFFIX}")),
                        size=size, mtime_ns=mtime_ns))
    return jobs


def finished_row(job, retry_errors=False):
    """The summary row recorded for ``job`` if it need not run again, else None.

    It need not when its record names the same input size and modification
    time and, for ``ok``, every asked-for output exists; an ``error`` row
    counts unless ``retry_errors``.
    """
    try:
        record = json.loads(Path(job.record).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("size") != job.size or record.get("mtime_ns") != job.mtime_ns:
        return None
    row = record.get("row") or {}
    if row.get("status") == "error":
        return None if retry_errors else row
    if row.get("status") != "ok" or not Path(job.csv_path).is_file():
        return None
    if job.annotated and not (record.get("annotated") and Path(job.annotated).is_file()):
        return None
    return row


def process_video(job, pipeline, labels):
    """Analyse one video into its outputs and record it; never raises for a bad video.

    Args:
        job: a ``Job``.
        pipeline: a ``vision.pipeline.FramePipeline``.
        labels: the classifier's class names (for the error row's columns).

    Returns:
        The summary row (dict with ``summary_columns(labels)`` keys): on
        ``status="error"``, ``error`` holds the reason and no output of this
        video is left on disk (stale ones from an earlier run are removed).

    Raises:
        KeyboardInterrupt: passed on, after the temporaries are removed.
        OSError: the record cannot be written (the output folder is gone).
    """
    from fer_server.offline.video import analyse_video

    started = time.perf_counter()
    row = empty_row(job, labels)
    try:
        Path(job.csv_path).parent.mkdir(parents=True, exist_ok=True)
        if job.annotated:
            Path(job.annotated).parent.mkdir(parents=True, exist_ok=True)
        summary = analyse_video(job.source, pipeline, job.annotated, job.csv_path, progress=False,
                                require_all_frames=True)
        row.update(frames=summary["frames"], duration_s=summary["video_seconds"], faces=summary["faces"],
                   frames_with_face=summary["frames_with_face"], mean_confidence=summary["mean_confidence"],
                   **{f"share_{name.lower()}": value for name, value in summary["share"].items()})
    except Exception as e:  # noqa: BLE001 - any failure of one video is that video's error row
        lines = str(e).strip().splitlines()
        row.update(status="error", error=(lines[0] if lines else type(e).__name__)[:300])
        for path in (job.csv_path, job.annotated):
            if path:
                Path(path).unlink(missing_ok=True)
    row["seconds"] = round(time.perf_counter() - started, 2)
    write_record(job, row)
    return row


def empty_row(job, labels, error=""):
    return {"video": job.video, "status": "error" if error else "ok", "error": error, "frames": 0,
            "duration_s": 0.0, "faces": 0, "frames_with_face": 0,
            **{f"share_{name.lower()}": 0.0 for name in labels}, "mean_confidence": 0.0, "seconds": 0.0}


def write_record(job, row):
    Path(job.record).parent.mkdir(parents=True, exist_ok=True)
    record = {"size": job.size, "mtime_ns": job.mtime_ns, "annotated": bool(job.annotated), "row": row}
    write_atomic(job.record, lambda tmp: tmp.write_text(json.dumps(record), encoding="utf-8"))


def remove_job_partials(job):
    for path in (job.csv_path, job.annotated):
        if path:
            path = Path(path)
            for partial in path.parent.glob(f".{glob.escape(path.stem)}.partial*{path.suffix}"):
                if _PARTIAL.match(partial.name):
                    partial.unlink(missing_ok=True)


def remove_partials(*folders):
    """Delete the hidden ``.name.partialPID.ext`` temporaries a killed run left under ``folders``."""
    removed = 0
    for folder in folders:
        if folder and Path(folder).is_dir():
            for path in Path(folder).rglob(".*.partial*"):
                if _PARTIAL.match(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed += 1
    return removed


def check_writable(folder, what):
    from fer_server.face_csv import ensure_writable_folder

    try:
        ensure_writable_folder(folder)
    except OSError as e:
        raise BatchInputError(f"cannot write to the {what} {folder} ({e.strerror or e})") from None


def write_summary(path, rows, labels):
    """Write ``rows`` (dicts) to the summary CSV at ``path``, sorted by video, atomically."""
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            table = csv.DictWriter(f, summary_columns(labels), extrasaction="ignore")
            table.writeheader()
            table.writerows(sorted(rows, key=lambda row: row["video"]))

    write_atomic(path, write)
