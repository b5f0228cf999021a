"""Batch analysis of many videos: a folder, a glob or a list, on all local cores or on Ray.

    python main.py --source DIR|GLOB|LIST.txt --csv-dir OUT [--output-dir ANNOTATED]
                   [--workers N] [--ray [ADDRESS]] [--force] [--retry-errors]

For each video ``REL/name.ext`` under the source root this writes
``OUT/REL/name.csv`` (``offline.video.analyse_video``'s columns), optionally
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
imports Ray unless asked.  Jobs and the per-video work: ``offline.jobs``; engines:
``offline.engines``.
"""
import argparse
import os
import sys
import time
from pathlib import Path

from fer_server.config import Config, source_specs
from fer_server.offline.engines import pool_rows, ray_rows, serial_rows, start_ray, stop_pool
from fer_server.offline.jobs import (SUMMARY_NAME, BatchInputError, check_writable, find_videos, finished_row,
                                    plan_jobs, read_labels, remove_partials, write_summary)


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
        check_writable(csv_dir, "output folder")
        if output_dir:
            check_writable(output_dir, "folder for annotated videos")
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
                results = ray_rows(todo, config, labels, workers)
            elif engine == "pool":
                results = pool_rows(todo, config, labels, workers, executors)
            else:
                results = serial_rows(todo, config, labels)
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
        stop_pool(executors)
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
