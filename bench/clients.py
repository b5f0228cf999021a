"""Frames delivered to concurrent MJPEG clients by the real server, and its CPU use.

    python -m bench.clients --source demo --clients 1,5 --seconds 10
    python -m bench.clients --source VIDEO --sources 1,2,4,6 [--json]
    python -m bench.clients --source VIDEO --check-recording 2 --seconds 60

Starts ``python main.py`` on a free 127.0.0.1 port, measures the time from
launch to the first JPEG received, then for each client count N opens N
concurrent ``GET /video_feed`` connections for ``--seconds`` seconds and
reports the frames per second each client received and the server
process's CPU use (percent of one core, from ``/proc/PID/stat``).

``--sources 1,2,4,6`` serves N sources at once (``--source s0=VIDEO
--source s1=VIDEO ...``, a fresh server for each N; with several
``--source`` videos the sources play them in turn), one viewer reading
``/video_feed/s<i>`` each, and reports each source's frames per second
over its file's own rate (its share), the slowest source's share, the
server's CPU, and how fresh the first source's labels were over the same
seconds (from ``/metrics``: the p50 and p95 of ``fer_label_lag_frames``,
each the upper bound of its histogram bucket, and the faces the background
classifier classified per second for all sources).

``--check-recording N`` serves N copies with ``--record`` and
``--events-interval-s 0`` (an event per frame), reads every source's
``/api/events`` for ``--seconds``, stops the server, and compares the
(frame, face id) pairs of the recorded CSV rows with those the viewers
saw: rows missing and rows written twice.
"""
import csv
import tempfile
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process and its threads, in seconds (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_chunks(port, path, seconds, headers=None):
    """Yield the body chunks of ``GET path`` as they arrive, for ``seconds`` (or until the server ends it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = response.read1(65536)
            if not chunk:
                break
            yield chunk
    finally:
        conn.close()


def read_parts(port, seconds, counts, index, first_part=None, headers=None, path="/video_feed"):
    """Count the MJPEG parts of ``path`` received within ``seconds`` (``headers``: e.g. the token)."""
    boundary = b"--frame\r\n"
    buffer = b""
    for chunk in stream_chunks(port, path, seconds, headers):
        buffer += chunk
        n = buffer.count(boundary)
        if n:
            counts[index] += n
            if first_part is not None and not first_part.is_set():
                first_part.set()
            buffer = buffer[buffer.rfind(boundary) + len(boundary):]


def start_server(source, port, extra=(), python=sys.executable, env=None):
    """``python main.py --source SOURCE`` (a string, or a list: one ``--source`` each) on ``port``.

    Args:
        python: the interpreter (another venv's, for ``bench.installs``).
        env: the server's environment (default: this process's).
    """
    sources = [source] if isinstance(source, str) else list(source)
    return subprocess.Popen([python, str(ROOT / "main.py"), *(a for s in sources for a in ("--source", s)),
                             "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env)


def wait_healthz(server, port, timeout_s=120):
    """Seconds from now until ``GET /healthz`` of a fresh server answers at all (any status)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()
            return time.monotonic() - started
        except OSError:
            time.sleep(0.02)
    raise SystemExit("no answer from /healthz within the timeout")


def wait_first_frame(server, port, timeout_s=120, headers=None, path="/video_feed"):
    """Seconds from now until the first MJPEG part of ``path`` arrives from a fresh server."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            first = threading.Event()
            read_parts(port, 0.5, [0], 0, first, headers, path)
            if first.is_set():
                return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    raise SystemExit("no frame from the server within the timeout")


def read_concurrently(server, port, seconds, paths):
    """One viewer per path at once for ``seconds``: ``(parts received per viewer, server CPU % of one core)``."""
    counts = [0] * len(paths)
    threads = [threading.Thread(target=read_parts, args=(port, seconds, counts, i), kwargs={"path": path})
               for i, path in enumerate(paths)]
    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
    return counts, round(100 * (cpu1 - cpu0) / (t1 - t0), 1)


def measure(server, port, clients, seconds):
    counts, cpu = read_concurrently(server, port, seconds, ["/video_feed"] * clients)
    fps = [c / seconds for c in counts]
    return {"clients": clients, "fps_per_client_mean": round(sum(fps) / clients, 2),
            "fps_per_client_min": round(min(fps), 2), "server_cpu_percent": cpu}


def run_clients(source, client_counts, seconds, extra=()):
    """Serve ``source`` with main.py and measure each client count in turn; prints and returns the figures.

    ``extra``: more ``main.py`` flags (server settings).
    """
    port = free_port()
    launched = time.monotonic()
    server = start_server(source, port, extra)
    try:
        wait_first_frame(server, port)
        startup = time.monotonic() - launched
        print(f"source {source}: first frame {startup:.1f} s after launching main.py", flush=True)
        results = []
        for n in client_counts:
            results.append(measure(server, port, n, seconds))
            r = results[-1]
            print(f"{n:3d} client(s): {r['fps_per_client_mean']:.1f} fps per client "
                  f"(slowest {r['fps_per_client_min']:.1f}), server CPU {r['server_cpu_percent']:.0f}% "
                  "of one core", flush=True)
        if len(results) > 1 and results[0]["server_cpu_percent"]:
            ratio = results[-1]["server_cpu_percent"] / results[0]["server_cpu_percent"]
            print(f"CPU with {client_counts[-1]} clients / with {client_counts[0]}: {ratio:.2f}x")
        return {"source": source, "startup_s": round(startup, 2), "runs": results}
    finally:
        server.terminate()
        server.wait(10)


def scrape_labels(port):
    """``({label lag bucket bound: cumulative count}, background faces classified)`` from ``/metrics``
    (the first source's histogram; None for a counter the server does not export)."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    buckets, background = {}, None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fer_label_lag_frames_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "fer_background_faces_classified_total":
                background = sample.value
    return buckets, background


def lag_quantile(before, after, q):
    """The upper bound of the bucket holding quantile ``q`` of the lags observed between two scrapes
    (cumulative ``{bound: count}`` each); None when none were."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    return next(b for b, c in zip(bounds, counts) if c >= q * counts[-1])


def video_fps(path):
    """The frame rate a video file declares (``CAP_PROP_FPS``), or None."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return fps if fps and fps > 0 else None


def run_sources(videos, source_counts, seconds, extra=()):
    """For each N, serve N sources with one viewer each; prints and returns the figures.

    Source ``i`` plays ``videos[i % len(videos)]`` (one video: N copies of it).
    Each source's share is its viewer's frames per second over its own file's
    rate; the slowest source's share is the figure that matters (a server
    that starves one source to feed the others fails it).

    Returns:
        ``{"videos", "runs": [{"sources": N, "fps": [per source], "share": [per source],
        "share_min", "share_mean", "server_cpu_percent", "load_average"}]}``.
    """
    videos = [videos] if isinstance(videos, str) else list(videos)
    rates = [video_fps(v) for v in videos]
    runs = []
    for n in source_counts:
        port = free_port()
        names = [f"s{i}" for i in range(n)]
        server = start_server([f"{name}={videos[i % len(videos)]}" for i, name in enumerate(names)], port, extra)
        try:
            for name in names:
                wait_first_frame(server, port, path=f"/video_feed/{name}")
            time.sleep(2.0)  # the viewers of the warm-up are gone and their threads settled
            lags0, background0 = scrape_labels(port)
            counts, cpu = read_concurrently(server, port, seconds, [f"/video_feed/{name}" for name in names])
            lags1, background1 = scrape_labels(port)
        finally:
            server.terminate()
            server.wait(10)
        fps = [round(c / seconds, 2) for c in counts]
        share = [round(f / rates[i % len(videos)], 3) if rates[i % len(videos)] else None for i, f in enumerate(fps)]
        known = [v for v in share if v is not None]
        runs.append({"sources": n, "fps": fps, "share": share,
                     "share_min": min(known) if known else None,
                     "share_mean": round(sum(known) / len(known), 3) if known else None,
                     "server_cpu_percent": cpu, "load_average": os.getloadavg()[0],
                     "label_lag_frames_p50": lag_quantile(lags0, lags1, 0.5),
                     "label_lag_frames_p95": lag_quantile(lags0, lags1, 0.95),
                     "background_faces_per_s": None if background1 is None
                     else round((background1 - background0) / seconds, 1)})
        r = runs[-1]
        labels = "" if r["label_lag_frames_p95"] is None else (
            f"; s0's label lag p50 <= {r['label_lag_frames_p50']:g}, p95 <= {r['label_lag_frames_p95']:g} frames"
            + ("" if r["background_faces_per_s"] is None else f", {r['background_faces_per_s']:g} faces/s "
               "classified in the background"))
        print(f"{n} source(s): share of own fps per source {', '.join(f'{v:.2f}' for v in known)} (slowest "
              f"{r['share_min'] or 0:.2f}, mean {r['share_mean'] or 0:.2f}), server CPU "
              f"{r['server_cpu_percent']:.0f}% of one core, load average {r['load_average']:.2f}{labels}",
              flush=True)
    return {"videos": [str(v) for v in videos], "video_fps": rates, "runs": runs}


def read_events(port, path, seconds, seen):
    """Collect ``(frame, face ids)`` of every server-sent event of ``path`` within ``seconds`` into ``seen``."""
    buffer = b""
    for chunk in stream_chunks(port, path, seconds):
        buffer += chunk
        *messages, buffer = buffer.split(b"\n\n")
        for message in messages:
            if message.startswith(b"data: "):
                event = json.loads(message[6:])
                seen.append((event["frame"], tuple(f["id"] for f in event["faces"])))


def check_recording(source, n, seconds, extra=()):
    """Serve ``n`` copies of ``source`` with ``--record``; compare the recorded rows with the frames seen.

    Returns:
        ``{"sources": n, "seconds", "per_source": {name: {"frames_seen", "rows", "missing", "twice",
        "unseen"}}}``: rows missing for (frame, face) pairs a viewer saw, (frame, face) pairs
        written more than once, and rows of frames inside the viewed span that no viewer saw.
    """
    folder = Path(tempfile.mkdtemp(prefix="fer-record-"))
    port = free_port()
    names = [f"s{i}" for i in range(n)]
    server = start_server([f"{name}={source}" for name in names], port,
                          ["--record", str(folder), "--events-interval-s", "0", *extra])
    seen = {name: [] for name in names}
    try:
        for name in names:
            wait_first_frame(server, port, path=f"/video_feed/{name}")
        threads = [threading.Thread(target=read_events, args=(port, f"/api/events?source={name}", seconds,
                                                              seen[name])) for name in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.terminate()  # Ctrl-C's path: the recorders write what they hold
        server.wait(20)
    result = {}
    for name in names:
        pairs = {(frame, face) for frame, faces in seen[name] for face in faces}
        first, last = min(f for f, _ in seen[name]), max(f for f, _ in seen[name])
        rows = []
        for path in sorted((folder / name).glob("*.csv")):
            with open(path, newline="") as f:
                rows += [(int(r["frame"]), int(r["face_id"])) for r in csv.DictReader(f)]
        in_span = [r for r in rows if first <= r[0] <= last]
        result[name] = {"frames_seen": len(seen[name]), "faces_seen": len(pairs), "rows": len(in_span),
                        "missing": len(pairs - set(in_span)), "twice": len(in_span) - len(set(in_span)),
                        "unseen": len(set(in_span) - pairs)}
        print(f"{name}: {result[name]}", flush=True)
    return {"sources": n, "seconds": seconds, "folder": str(folder), "per_source": result}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", action="append",
                   help="what main.py streams (default: demo); with --sources, repeat it for several videos, "
                        "played by the sources in turn")
    p.add_argument("--clients", default="1,5", help="comma-separated client counts")
    p.add_argument("--sources", help="comma-separated source counts: N copies of --source, one viewer each")
    p.add_argument("--check-recording", type=int, metavar="N",
                   help="serve N copies with --record and check the rows against the frames seen")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    args, extra = p.parse_known_args(argv)  # the rest are main.py's flags (server settings)
    videos = args.source or ["demo"]
    args.source = videos[0]
    if args.check_recording:
        result = check_recording(args.source, args.check_recording, args.seconds, extra)
    elif args.sources:
        result = run_sources(videos, [int(v) for v in args.sources.split(",")], args.seconds, extra)
    else:
        result = run_clients(args.source, [int(v) for v in args.clients.split(",")], args.seconds, extra)
    if args.json or not (args.sources or args.check_recording):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
