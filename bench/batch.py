"""Batch throughput: the same folder serially, on the process pool and on a local Ray instance.

    python -m bench.batch --source DIR [--workers N] [--json]

Runs ``offline.batch.run_batch`` three times with ``force`` into fresh temporary
output folders: in this process with today's thread settings (``serial``),
with ``N`` worker processes (``pool``, default: the number of cores) and on a
local Ray instance with ``N`` CPUs (``ray``), then reruns the pool over its
finished folder (``rerun_s``: nothing to do).  Throughput is video frames
analysed per second of wall time, start-up included (worker start and model
loading; for Ray, not ``ray.init``, which is timed apart as ``ray_init_s``).
Peak memory is the summed resident set of this process's descendants
(workers; for Ray also its GCS, raylet and actors), sampled every 0.2 s.
CPU time (this process and its reaped children: serial and pool only, as
Ray's workers are not this process's children) gives frames per core-second
(``*_frames_per_cpu_s``), which other load on the machine does not change
much.  The last line is JSON; ``identical`` says whether every per-video CSV and
every summary row (but its ``seconds``) came out the same in all three runs.
"""
import argparse
import csv
import io
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from fer_server.config import add_config_arguments, config_from_args


def descendants_rss_mb():
    """Summed RSS in MB of every process descending from this one (Linux ``/proc``)."""
    children, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 2**20


class PeakMemory:
    """Context manager sampling ``descendants_rss_mb`` in a thread; ``.peak_mb`` after exit."""

    def __init__(self, interval_s=0.2):
        self.interval_s, self.peak_mb, self._stop = interval_s, 0.0, threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, descendants_rss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def rows_without_time(out):
    with open(Path(out) / "summary.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def same_outputs(folders):
    """Every per-video CSV byte for byte, and the summary rows but ``seconds``, equal across ``folders``."""
    first = Path(folders[0])
    names = sorted(p.relative_to(first) for p in first.rglob("*.csv") if p.name != "summary.csv")
    return all(rows_without_time(f) == rows_without_time(first) for f in folders) and all(
        (Path(f) / name).read_bytes() == (first / name).read_bytes() for f in folders for name in names)


def cpu_seconds():
    """User + system CPU seconds of this process and of its children that have been waited for."""
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def timed_run(source, out, config, **kwargs):
    """``run_batch`` with ``force``: ``(wall seconds, frames of ok videos, peak MB, CPU seconds)``."""
    from fer_server.offline.batch import run_batch

    printed = io.StringIO()
    with PeakMemory() as memory:
        started, cpu = time.perf_counter(), cpu_seconds()
        run_batch(source, out, force=True, config=config, progress=False, out=printed, **kwargs)
        wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    print(f"  {printed.getvalue().strip()}")
    frames = sum(int(row["frames"]) for row in rows_without_time(out) if row["status"] == "ok")
    return wall, frames, memory.peak_mb, cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="folder, glob or list of videos")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="pool workers and Ray CPUs")
    add_config_arguments(p.add_argument_group("analysis settings (config.Config)"),
                         exclude=("host", "port", "source", "token", "no_token", "certfile", "keyfile"))
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config = config_from_args(args)
    result = {"workers": args.workers, "cores": os.cpu_count(), "load_before": round(os.getloadavg()[0], 1)}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        outs = {name: Path(tmp) / name for name in ("serial", "pool", "ray")}
        for name, kwargs in (("serial", {"workers": 0}), ("pool", {"workers": args.workers})):
            wall, frames, peak, cpu = timed_run(args.source, outs[name], config, **kwargs)
            result.update({f"{name}_wall_s": round(wall, 2), f"{name}_fps": round(frames / wall, 1),
                           f"{name}_peak_mb": round(peak), f"{name}_cpu_s": round(cpu, 1),
                           f"{name}_frames_per_cpu_s": round(frames / cpu, 1)})
            result["frames"] = frames
        started = time.perf_counter()
        from fer_server.offline.batch import run_batch
        from fer_server.offline.engines import start_ray

        with PeakMemory() as idle:
            start_ray("", num_cpus=args.workers)
            result["ray_init_s"] = round(time.perf_counter() - started, 2)
            time.sleep(1)
        result["ray_idle_mb"] = round(idle.peak_mb)
        import ray

        try:
            wall, frames, peak, _ = timed_run(args.source, outs["ray"], config, ray_address="",
                                                 workers=args.workers)
        finally:
            ray.shutdown()
        result.update(ray_wall_s=round(wall, 2), ray_fps=round(frames / wall, 1), ray_peak_mb=round(peak))
        started = time.perf_counter()
        run_batch(args.source, outs["pool"], workers=args.workers, config=config, progress=False,
                  out=io.StringIO())
        result["rerun_s"] = round(time.perf_counter() - started, 2)
        result["identical"] = same_outputs(list(outs.values()))
    result["load_after"] = round(os.getloadavg()[0], 1)  # 1-minute load average: other work on the machine
    result["pool_vs_serial"] = round(result["pool_fps"] / result["serial_fps"], 2)
    result["ray_vs_pool"] = round(result["ray_fps"] / result["pool_fps"], 2)
    if not args.json:
        for name in ("serial", "pool", "ray"):
            print(f"{name:>6}: {result[f'{name}_fps']:7.1f} frames/s, {result[f'{name}_wall_s']:6.1f} s wall, "
                  f"peak {result[f'{name}_peak_mb']} MB in child processes")
        print(f"CPU: serial {result['serial_cpu_s']} s ({result['serial_frames_per_cpu_s']} frames per "
              f"core-second), pool {result['pool_cpu_s']} s ({result['pool_frames_per_cpu_s']})")
        print(f"pool {result['pool_vs_serial']}x serial, ray {result['ray_vs_pool']}x pool; ray.init "
              f"{result['ray_init_s']} s, idle Ray {result['ray_idle_mb']} MB; rerun over the finished folder "
              f"{result['rerun_s']} s; identical outputs: {result['identical']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
