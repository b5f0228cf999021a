"""Batch analysis of many videos: a folder, a glob or a list, on all local cores or on Ray.

    python main.py --source DIR|GLOB|LIST.txt --csv-dir OUT [--output-dir ANNOTATED]
                   [--workers N] [--ray [ADDRESS]] [--force] [--retry-errors]

For each video ``REL/name.ext`` under the source root this writes
``OUT/REL/name.csv`` (``analyse.analyse_video``'s columns), optionally
``ANNOTATED/REL/name.mp4``, and at the end ``OUT/summary.csv`` with one row per
video.  Two videos that would share an output name (``a.mp4`` and ``a.avi``)
keep their extension in it (``a.mp4.csv``, ``a.avi.csv``).

Resumable: every output is written under a temporary name and renamed when
complete; then a record ``OUT/REL/.name.csv.done.json`` (the input's size and
modification time and the summary row) is renamed into place.  A rerun skips
videos whose record matches the input and whose outputs exist; ``force``
redoes them.  Videos that failed keep their error row on a rerun unless the
input changed or ``retry_errors`` is set (a file that cannot be decoded
usually stays so).  Interrupted runs leave hidden ``.*.partialPID.*``
temporaries only if killed outright; every run removes them first.

Engines: ``workers=0`` runs in this process with today's thread settings;
otherwise a pool of spawned worker processes, each loading the model once
with one TFLite and one OpenCV thread; ``ray_address`` (``""`` for a local
instance) runs the same per-video function in Ray Data actors.  Nothing here
imports Ray unless asked.
"""
import argparse
import csv
import glob
import json
import os
import re
import socket
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from atomic import write_atomic
from config import ROOT, Config, source_specs

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
    from model_files import FER2013_LABELS, LABELS_KEY

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
        pipeline: a ``pipeline.FramePipeline``.
        labels: the classifier's class names (for the error row's columns).

    Returns:
        The summary row (dict with ``summary_columns(labels)`` keys): on
        ``status="error"``, ``error`` holds the reason and no output of this
        video is left on disk (stale ones from an earlier run are removed).

    Raises:
        KeyboardInterrupt: passed on, after the temporaries are removed.
        OSError: the record cannot be written (the output folder is gone).
    """
    from analyse import analyse_video

    started = time.perf_counter()
    row = _empty_row(job, labels)
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
    _write_record(job, row)
    return row


def _empty_row(job, labels, error=""):
    return {"video": job.video, "status": "error" if error else "ok", "error": error, "frames": 0,
            "duration_s": 0.0, "faces": 0, "frames_with_face": 0,
            **{f"share_{name.lower()}": 0.0 for name in labels}, "mean_confidence": 0.0, "seconds": 0.0}


def _write_record(job, row):
    Path(job.record).parent.mkdir(parents=True, exist_ok=True)
    record = {"size": job.size, "mtime_ns": job.mtime_ns, "annotated": bool(job.annotated), "row": row}
    write_atomic(job.record, lambda tmp: tmp.write_text(json.dumps(record), encoding="utf-8"))


def _remove_job_partials(job):
    for path in (job.csv_path, job.annotated):
        if path:
            path = Path(path)
            for partial in path.parent.glob(f".{glob.escape(path.stem)}.partial*{path.suffix}"):
                if _PARTIAL.match(partial.name):
                    partial.unlink(missing_ok=True)


def build_worker_pipeline(config, threads=1):
    """The configured pipeline with ``threads`` TFLite threads and as many OpenCV threads.

    Sets ``OMP_NUM_THREADS`` and TensorFlow's intra-/inter-op thread counts
    too, so that call it before anything else in the process uses TensorFlow.

    Raises:
        model_files.ModelLoadError: the model files cannot be loaded.
    """
    import cv2

    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[name] = str(threads)
    cv2.setNumThreads(threads)
    from classifier import quiet_tensorflow

    with quiet_tensorflow():
        import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already initialised in this process
        pass
    from builders import build_classifier, build_pipeline

    with quiet_tensorflow():
        classifier = build_classifier(config, threads)
    return build_pipeline(config, classifier=classifier)


_worker = {}


def _init_pool_worker(config, labels, started, run):
    _worker.update(pipeline=build_worker_pipeline(config), labels=labels, started=started, run=run)


def _pool_task(job):
    _worker["started"].put(job.video)  # SimpleQueue: written before the video starts, even if it then crashes
    try:
        return _worker["run"](job, _worker["pipeline"], _worker["labels"])
    except KeyboardInterrupt:  # its temporaries are removed; exit before the pool hands over the next video
        os._exit(130)


class RayVideoWorker:
    """A Ray Data actor (``map_batches`` callable class): loads the model once, then one video per call.

    Each batch is ``{"job": [JSON of a Job], ...}``; the result is
    ``{"row": [JSON of its summary row], ...}`` (strings keep Arrow's
    schema fixed whether a row is ok or an error).
    """

    def __init__(self, config, labels):
        self.pipeline = build_worker_pipeline(config)
        self.labels = labels

    def __call__(self, batch):
        rows = [process_video(Job(**json.loads(text)), self.pipeline, self.labels) for text in batch["job"]]
        return {"row": [json.dumps(row) for row in rows]}


def check_ray_address(address, timeout_s=5.0):
    """Fail fast on an unreachable ``host:port`` (``ray.init`` would wait long for it).

    Raises:
        BatchInputError: nothing answers at that address.
    """
    match = re.fullmatch(r"(?:[a-z]+://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if not match:
        return  # "auto" and the like: ray.init decides
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout_s).close()
    except OSError as e:
        raise BatchInputError(f"cannot reach the Ray cluster at {address} ({e})") from None


def start_ray(address, num_cpus=None):
    """Connect to the Ray cluster at ``address`` or, for ``""``/None, start a local instance.

    A Ray already initialised in this process (a test's ``ray.init(num_cpus=2)``)
    is used as it is.  Workers get this project on ``PYTHONPATH`` (so it must
    be at the same path on every node) and one thread per library.

    Returns:
        True when this call started or connected Ray (the caller shuts it down).

    Raises:
        BatchInputError: Ray is not installed, or the cluster cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise BatchInputError("--ray needs Ray: pip install -r requirements-ray.txt") from None
    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
           "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if address:
        check_ray_address(address)
    try:
        ray.init(address=address or None, num_cpus=None if address else num_cpus, include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BatchInputError(f"cannot connect to Ray at {address or 'a new local instance'} ({e})") from None
    return True


def _ray_rows(todo, config, labels, workers):
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    dataset = ray.data.from_items([{"job": json.dumps(asdict(job))} for job in todo],
                                  override_num_blocks=len(todo))
    dataset = dataset.map_batches(RayVideoWorker, fn_constructor_kwargs={"config": config, "labels": labels},
                                  batch_size=1, num_cpus=1, zero_copy_batch=True,
                                  compute=ray.data.ActorPoolStrategy(min_size=1, max_size=min(size, len(todo))))
    for item in dataset.iter_rows():
        yield json.loads(item["row"])


def _pool_rows(todo, config, labels, workers, executors, run=process_video):
    """Rows from a spawned process pool; ``run(job, pipeline, labels)`` is the per-video work.

    A worker that dies (a crash in a decoder, the OOM killer) breaks the
    pool: each video that was being analysed then is run again alone in a
    fresh worker, and gets an error row if that one dies too; the videos not
    yet begun go to a new pool.

    Raises:
        RuntimeError: the workers died before starting any video (model loading).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    started = context.SimpleQueue()

    def pool_round(jobs, size):
        """Yield the rows of ``jobs``; return ``(lost jobs, videos begun)``."""
        executor = ProcessPoolExecutor(size, mp_context=context, initializer=_init_pool_worker,
                                       initargs=(config, labels, started, run))
        executors.append(executor)
        futures = {executor.submit(_pool_task, job): job for job in jobs}
        lost = []
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                lost.append(futures[future])
        executor.shutdown()
        begun = set()
        while not started.empty():
            begun.add(started.get())
        for job in lost:
            _remove_job_partials(job)
        if lost and not begun.intersection(job.video for job in lost):
            raise RuntimeError("the worker processes died before analysing any video")
        return lost, begun

    pending = list(todo)
    while pending:
        lost, begun = yield from pool_round(pending, min(workers, len(pending)))
        for job in (job for job in lost if job.video in begun):
            crashed, _ = yield from pool_round([job], 1)
            if crashed:
                row = _empty_row(job, labels, "the worker process died while analysing it, twice")
                _write_record(job, row)
                yield row
        pending = [job for job in lost if job.video not in begun]


def _serial_rows(todo, config, labels):
    from builders import build_pipeline

    pipeline = build_pipeline(config)
    for job in todo:
        yield process_video(job, pipeline, labels)


def _stop_pool(executors):
    """Ctrl-C: pass SIGINT on to pool workers (their temporaries are removed as it unwinds), then wait."""
    import signal

    for executor in executors:
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGINT)
        executor.shutdown(wait=True, cancel_futures=True)


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


def _check_writable(folder, what):
    from analyse import ensure_writable_folder

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


def run_batch(source, csv_dir, output_dir=None, workers=None, ray_address=None, force=False,
              retry_errors=False, config=Config(), progress=True, out=None):
    """Analyse every video of ``source`` into per-video CSVs and ``csv_dir/summary.csv``.

    Args:
        source: folder, glob, list file or video (see ``find_videos``).
        csv_dir: output folder of the per-video CSVs and the summary.
        output_dir: output folder of the annotated videos (None: none).
        workers: worker processes (None: ``os.cpu_count()``); 0 runs in this
            process with today's thread settings.  With Ray: the actor pool's
            largest size (None: the cluster's CPUs).
        ray_address: None for no Ray; ``""`` for a new local instance (or
            the one already initialised here); else ``ray.init``'s address.
        force: redo videos whose outputs are complete and current.
        retry_errors: redo videos recorded as errors though unchanged.
        config: model, backend and detector settings.
        progress: a tqdm bar over videos on stderr, with frames/s and ETA.
        out: where the closing summary line goes (None: ``sys.stdout``).

    Returns:
        The exit code: 0 when every video is ``ok``, 1 when some are
        ``error`` (see the summary) or the engine failed (a message on
        stderr, no summary), 2 on bad input (message on stderr, nothing
        done), 130 on Ctrl-C.
    """
    from tqdm import tqdm

    started, out = time.perf_counter(), out or sys.stdout
    try:
        if workers is not None and workers < 0:
            raise BatchInputError(f"--workers must be 0 or more, not {workers}")
        for path in (config.model_path, config.weights_path):
            if not Path(path).is_file():
                raise BatchInputError(f"the model file {path} does not exist")
        labels = read_labels(config.model_path)
        root, videos, ignored = find_videos(source, exclude=(csv_dir, output_dir))
        _check_writable(csv_dir, "output folder")
        if output_dir:
            _check_writable(output_dir, "folder for annotated videos")
        started_ray = start_ray(ray_address) if ray_address is not None else False
    except BatchInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    remove_partials(csv_dir, output_dir)
    jobs = plan_jobs(root, videos, csv_dir, output_dir)
    rows, todo = [], []
    for job in jobs:
        row = None if force else finished_row(job, retry_errors)
        if row:
            rows.append(row)
        else:
            todo.append(job)
    skipped = len(rows)
    todo.sort(key=lambda job: -job.size)  # longest first: fewer idle workers at the end
    workers = os.cpu_count() if workers is None else workers
    engine = "ray" if ray_address is not None else "pool" if workers else "serial"
    frames, executors, interrupted, failure = 0, [], False, None
    try:
        if todo:
            if engine == "ray":
                results = _ray_rows(todo, config, labels, workers)
            elif engine == "pool":
                results = _pool_rows(todo, config, labels, workers, executors)
            else:
                results = _serial_rows(todo, config, labels)
            with tqdm(total=len(todo), unit="video", disable=not progress, desc=engine, smoothing=0) as bar:
                for row in results:
                    rows.append(row)
                    frames += row["frames"]
                    bar.set_postfix_str(f"{frames / max(bar.format_dict['elapsed'], 1e-9):.0f} frames/s "
                                        f"{sum(r['status'] == 'error' for r in rows)} errors", refresh=False)
                    bar.update()
        write_summary(Path(csv_dir) / SUMMARY_NAME, rows, labels)
    except KeyboardInterrupt:
        interrupted = True
        _stop_pool(executors)
    except Exception as e:  # noqa: BLE001 - the engine itself failed (not one video): say so, keep the records
        failure = (str(e).strip().splitlines() or [type(e).__name__])[0]
        for executor in executors:
            executor.shutdown(wait=True, cancel_futures=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
        if interrupted or failure:
            remove_partials(csv_dir, output_dir)
    if failure:
        print(f"error: the batch stopped ({failure}); the videos finished so far are recorded, run it again "
              f"to go on", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    errors = sum(row["status"] == "error" for row in rows)
    done = len(rows) - skipped
    print(f"{'interrupted: ' if interrupted else ''}{len(rows) - errors} videos ok, {errors} errors, "
          f"{skipped} skipped as done before ({ignored} other files ignored); {frames} frames analysed in "
          f"{done} videos in {elapsed:.1f} s ({frames / elapsed:.1f} frames/s, {engine})"
          + ("" if interrupted else f"; summary: {Path(csv_dir) / SUMMARY_NAME}"), file=out)
    return 130 if interrupted else 1 if errors else 0


def add_batch_arguments(parser):
    """Add the batch flags (``--csv-dir``, ``--output-dir``, ``--workers``, ``--ray``, ``--force``,
    ``--retry-errors``) to an ``argparse.ArgumentParser``."""
    group = parser.add_argument_group("batch analysis (with --csv-dir; --source is a folder, glob or list)")
    group.add_argument("--csv-dir", help="analyse every video of --source (a folder, searched recursively, "
                                         "a glob or a .txt list) into OUT/REL/name.csv and OUT/summary.csv")
    group.add_argument("--output-dir", help="also write annotated videos to ANNOTATED/REL/name.mp4")
    group.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: the number of cores; 0: this process only)")
    group.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="run on a Ray cluster at ADDRESS (without one, a local Ray instance)")
    group.add_argument("--force", action="store_true", help="redo videos already analysed")
    group.add_argument("--retry-errors", action="store_true", help="redo videos that failed before")
    return parser


def run_from_args(args, config):
    """``main.py``'s batch dispatch: ``run_batch`` with the parsed flags; returns the exit code."""
    sources = source_specs(config)
    if len(sources) != 1:
        print("error: --csv-dir analyses one --source (a folder, a glob or a list file)", file=sys.stderr)
        return 2
    return run_batch(sources[0], args.csv_dir, args.output_dir, args.workers, args.ray, args.force,
                     args.retry_errors, config)


if __name__ == "__main__":  # python batch.py --source DIR --csv-dir OUT (main.py is the usual door)
    parser = add_batch_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--source", required=True)
    parsed = parser.parse_args()
    sys.exit(run_from_args(parsed, Config(source=parsed.source)))
