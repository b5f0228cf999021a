"""Load test: MJPEG viewers plus API requests against a real server on 127.0.0.1.

    python -m bench.load --clients 50 --rps 5 --seconds 60
    python -m bench.load --clients 20 --seconds 600 --churn 15       # soak: viewers come and go
    python -m bench.load --clients 5 --seconds 40 --fail-source-at 10  # the source drops for 5 s

Starts ``main.py`` (uvicorn, ``web.server.py``) streaming ``--source`` (default: the demo
clip), then runs ``--clients`` MJPEG viewers and ``--rps`` ``POST
/api/predict`` requests per second (a fixture photo) for ``--seconds``.
Reports errors, frames delivered per viewer per second, API latency
p50/p95/p99, and the server's resident memory and thread count at start and
end.  ``--churn S`` makes each viewer reconnect every S seconds on average.
``--fail-source-at T`` serves the video to the tested server through a
second server (an MJPEG URL source), stops that one at T seconds for 5 s and
restarts it.  A probe reads the restarted upstream itself; the recovery
clock starts at the first real frame the upstream serves (an
``X-Frame-Kind: frame`` part) and stops, for each viewer, at its first
real frame after that; placeholder and keep-alive parts
(``capture.mjpeg.PART_KINDS``) do not count.
Every request goes to 127.0.0.1, and every loop stops at ``--seconds`` (with
``--fail-source-at``, at least 10 s after the source is back).
"""
import argparse
import http.client
import json
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path

import numpy as np

from bench.clients import free_port, start_server, wait_first_frame

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = b"--frame\r\n"
REAL = b"X-Frame-Kind: frame\r\n"


def proc_status(pid):
    """``(resident MB, threads)`` of a process, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


class Viewer(threading.Thread):
    """Reads /video_feed until ``stop``; counts parts and errors, and times the real frames.

    ``real_times`` holds the ``time.monotonic()`` at which each part marked
    ``X-Frame-Kind: frame`` arrived (not placeholders or keep-alives),
    ``connected_times`` when each of its connections was answered.
    """

    def __init__(self, port, stop, churn_s=0.0, headers=None):
        super().__init__(daemon=True)
        self.port, self.stop, self.churn_s, self.headers = port, stop, churn_s, headers or {}
        self.parts, self.errors, self.connections = 0, [], 0
        self.real_times = []
        self.connected_times = []

    def run(self):
        while not self.stop.is_set():
            until = time.monotonic() + random.expovariate(1 / self.churn_s) if self.churn_s else None
            try:
                self.watch(until)
            except (OSError, http.client.HTTPException) as e:
                if not self.stop.is_set():
                    self.errors.append(repr(e))
                    time.sleep(0.5)

    def watch(self, until):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.connections += 1
        try:
            conn.request("GET", "/video_feed", headers=self.headers)
            response = conn.getresponse()
            if response.status != 200:
                self.errors.append(f"HTTP {response.status}")
                time.sleep(0.5)
                return
            self.connected_times.append(time.monotonic())  # a gap is counted from here too
            tail = b""
            keep = len(BOUNDARY) + len(REAL) + 40  # enough to see a part's boundary and kind together
            while not self.stop.is_set() and (until is None or time.monotonic() < until):
                chunk = response.read1(65536)
                if not chunk:
                    raise ConnectionError("stream ended")
                data = tail + chunk
                now = time.monotonic()
                self.parts += data.count(BOUNDARY) - tail.count(BOUNDARY)
                self.real_times.extend([now] * (data.count(REAL) - tail.count(REAL)))
                tail = data[-keep:]
        finally:
            conn.close()


def longest_gap(real_times, connected_times, end):
    """Longest time in seconds a viewer went without a real frame.

    Counted from its first connection to its first real frame, between
    consecutive real frames (a reconnection in between does not reset it),
    and from its last real frame to ``end``; placeholders and keep-alives
    are not frames.  Times are ``time.monotonic()`` seconds.
    """
    start = min(connected_times) if connected_times else end
    edges = [start] + sorted(t for t in real_times if t >= start) + [end]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)


def hog(seconds):
    """Spin one CPU until ``seconds`` have passed (a stand-in for other CPU-bound work)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def first_real_frame(port, deadline_s=60.0):
    """``time.monotonic()`` when a fresh reader of ``port``'s /video_feed gets its first real frame.

    Retries the connection until the server answers (it may be starting);
    None if no real frame came within ``deadline_s`` seconds.
    """
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/video_feed")
            response = conn.getresponse()
            data = b""
            while time.monotonic() < deadline:
                chunk = response.read1(65536)
                if not chunk:
                    break
                data = data[-len(REAL):] + chunk
                if REAL in data:
                    return time.monotonic()
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
        finally:
            conn.close()
    return None


def api_load(port, rps, stop, photo, latencies, errors, headers=None):
    """``rps`` POST /api/predict per second, each timed; runs until ``stop``."""
    headers = {"Content-Type": "image/jpeg", **(headers or {})}
    interval = 1.0 / rps
    due = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        due += interval
        started = time.monotonic()
        try:
            conn.request("POST", "/api/predict", body=photo, headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or "faces" not in json.loads(body):
                errors.append(f"API HTTP {response.status}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            errors.append(f"API {e!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        latencies.append((time.monotonic() - started) * 1e3)
        stop.wait(max(0.0, due - time.monotonic()))
    conn.close()


def fixture_photo():
    import cv2

    faces = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((ROOT / "tests/fixtures/faces").glob("*.png"))]
    canvas = np.full((260, 700), 170, np.uint8)
    for i, face in enumerate(faces[:3]):
        canvas[50:210, 40 + i * 220:200 + i * 220] = cv2.resize(face, (160, 160), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", canvas)[1].tobytes()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="demo")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rps", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--churn", type=float, default=0.0, help="mean seconds a viewer stays before reconnecting")
    p.add_argument("--fail-source-at", type=float, help="stop the upstream source at this second, for 5 s")
    p.add_argument("--token", help="run the server with this access token; every request sends it")
    p.add_argument("--hogs", type=int, default=0,
                   help="also run this many CPU-bound processes for --seconds (oversubscription)")
    p.add_argument("--boost", type=int, default=0, metavar="N",
                   help="run this load generator N nice levels above the server and the hogs (needs root), "
                        "so that a starved figure is the server's, not the generator's")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    auth = {"Authorization": f"Bearer {args.token}"} if args.token else {}

    upstream = None
    source = args.source
    if args.fail_source_at is not None:
        upstream_port = free_port()
        upstream = start_server(args.source, upstream_port)
        wait_first_frame(upstream, upstream_port)
        source = f"http://127.0.0.1:{upstream_port}/video_feed"
    port = free_port()
    server = start_server(source, port, ["--max-clients", str(max(64, args.clients + 8)),
                                         *(["--token", args.token] if args.token else [])])
    try:
        wait_first_frame(server, port, headers=auth)
        photo = fixture_photo()
        warm = []
        api_load_once = threading.Event()
        threading.Timer(3.0, api_load_once.set).start()
        api_load(port, 2.0, api_load_once, photo, warm, [], auth)  # the API path's first calls allocate
        mem0, threads0 = proc_status(server.pid)
        stop = threading.Event()
        viewers = [Viewer(port, stop, args.churn, auth) for _ in range(args.clients)]
        latencies, api_errors = [], []
        api = threading.Thread(target=api_load, args=(port, args.rps, stop, photo, latencies,
                                                      api_errors, auth), daemon=True) if args.rps else None
        started = time.monotonic()
        hogs = [multiprocessing.Process(target=hog, args=(args.seconds,), daemon=True) for _ in range(args.hogs)]
        for h in hogs:
            h.start()
        if args.boost:  # after the server and hogs started: they keep the normal priority
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) - args.boost)
        for v in viewers:
            v.start()
        if api:
            api.start()
        samples = []
        outage = None
        warm_mem = None
        deadline = started + args.seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
            samples.append((round(time.monotonic() - started), *proc_status(server.pid)))
            if warm_mem is None and time.monotonic() - started >= 10:
                warm_mem = samples[-1][1]
            if upstream and outage is None and time.monotonic() - started >= args.fail_source_at:
                upstream.terminate()
                upstream.wait(10)
                outage = time.monotonic()
                time.sleep(5.0)
                upstream = start_server(args.source, upstream_port)
                back = first_real_frame(upstream_port)
                if back is not None:  # leave the viewers 10 s to get their first real frame
                    deadline = max(deadline, back + 10.0)
        stop.set()
        ended = time.monotonic()
        elapsed = ended - started  # the load's own duration, not the joins below
        for v in viewers:
            v.join(15)
        if api:
            api.join(15)
        for h in hogs:
            h.join(5)
        time.sleep(2.0)
        mem1, threads1 = proc_status(server.pid)
    finally:
        server.terminate()
        server.wait(10)
        if upstream:
            upstream.terminate()
            upstream.wait(10)

    fps = [sum(t <= ended for t in v.real_times) / elapsed for v in viewers]  # real frames only
    result = {
        "clients": args.clients, "rps": args.rps, "seconds": round(elapsed, 1), "churn_s": args.churn,
        "viewer_errors": sum(len(v.errors) for v in viewers), "api_errors": len(api_errors),
        "fps_per_viewer_mean": round(float(np.mean(fps)), 2), "fps_per_viewer_min": round(min(fps), 2),
        "connections": sum(v.connections for v in viewers),
        "api_requests": len(latencies),
        "api_ms": {q: round(float(np.percentile(latencies, int(q[1:]))), 1) for q in ("p50", "p95", "p99")}
        if latencies else None,
        "api_ms_max": round(max(latencies), 1) if latencies else None,
        # the longest any viewer went without a real frame (from its connection on)
        "viewer_longest_gap_s": round(max(longest_gap(v.real_times, v.connected_times, ended) for v in viewers), 2),
        "hogs": args.hogs,
        "server_rss_mb": [round(mem0, 1), round(mem1, 1)], "server_threads": [threads0, threads1],
        # after the first 10 s every viewer and the API path have allocated their buffers
        "server_rss_mb_warm": [round(warm_mem, 1), round(mem1, 1)] if warm_mem else None,
        "samples": samples,
    }
    if outage is not None:
        gaps = []
        for v in viewers:
            after = [t for t in v.real_times if back is not None and t >= back]
            gaps.append(after[0] - back if after else None)
        result["source_back_to_frames_s"] = None if None in gaps else round(max(gaps), 2)
        result["source_back_to_frames_mean_s"] = None if None in gaps else round(float(np.mean(gaps)), 2)
    errors = [e for v in viewers for e in v.errors] + api_errors
    print(f"{args.clients} viewers + {args.rps:g} API req/s for {elapsed:.0f} s"
          f"{f', churn {args.churn:g} s' if args.churn else ''}: "
          f"{result['viewer_errors']} viewer errors, {result['api_errors']} API errors")
    print(f"frames per viewer per second: mean {result['fps_per_viewer_mean']}, "
          f"slowest {result['fps_per_viewer_min']} ({result['connections']} connections)")
    if latencies:
        print(f"API latency ms: p50 {result['api_ms']['p50']}, p95 {result['api_ms']['p95']}, "
              f"p99 {result['api_ms']['p99']}, max {result['api_ms_max']} ({len(latencies)} requests)")
    print(f"longest time a viewer went without a real frame: {result['viewer_longest_gap_s']} s"
          f"{f' ({args.hogs} CPU hogs running)' if args.hogs else ''}")
    print(f"server memory {mem0:.1f} MB -> {mem1:.1f} MB ({mem1 - mem0:+.1f} MB), "
          f"threads {threads0} -> {threads1}")
    if warm_mem:
        print(f"server memory after the first 10 s of load {warm_mem:.1f} MB -> at the end {mem1:.1f} MB "
              f"({mem1 - warm_mem:+.1f} MB)")
    if outage is not None:
        print(f"source stopped for 5 s: from the restarted source's first real frame, every viewer had a "
              f"real frame within {result['source_back_to_frames_s']} s "
              f"(mean {result['source_back_to_frames_mean_s']} s)")
    for e in sorted(set(errors))[:5]:
        print("  error:", e)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
