"""Latency of ``POST /api/predict`` with and without Grad-CAM explanations, through the real server.

    python -m bench.explain --source VIDEO --photo PHOTO [--requests 100] [--json]

Starts ``python main.py --source VIDEO``, keeps one viewer reading its
``/video_feed`` (so the capture thread runs as it does when someone
watches), then sends the photo ``--requests`` times to ``/api/predict``
and as many times to ``/api/predict?explain=1``, one request at a time,
and prints the p50 and p95 of each in milliseconds (after 5 warm-up
requests each, the first explanation building the Grad-CAM graph).
"""
import argparse
import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np

from bench.clients import free_port, read_parts, start_server, wait_first_frame


def post(port, path, data):
    """One ``POST`` of ``data`` as ``image/jpeg``; returns (milliseconds, parsed JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    conn.request("POST", path, body=data, headers={"Content-Type": "image/jpeg"})
    body = conn.getresponse().read()
    elapsed = (time.perf_counter() - started) * 1e3
    conn.close()
    return elapsed, json.loads(body)


def measure(port, path, data, requests, warmup=5):
    """p50 and p95 (ms) and the face count of ``requests`` sequential posts, after ``warmup`` ones."""
    for _ in range(warmup):
        post(port, path, data)
    times, faces = [], None
    for _ in range(requests):
        ms, answer = post(port, path, data)
        times.append(ms)
        faces = len(answer["faces"])
    return {"path": path, "p50_ms": round(float(np.percentile(times, 50)), 1),
            "p95_ms": round(float(np.percentile(times, 95)), 1), "faces": faces}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="the video main.py streams meanwhile")
    p.add_argument("--photo", required=True, help="the image posted (one face for the issue's target)")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--json", action="store_true")
    args, extra = p.parse_known_args(argv)
    data = Path(args.photo).read_bytes()
    port = free_port()
    server = start_server(args.source, port, extra)
    try:
        wait_first_frame(server, port)
        viewer = threading.Thread(target=read_parts, args=(port, 3600, [0], 0), daemon=True)
        viewer.start()
        results = [measure(port, "/api/predict", data, args.requests),
                   measure(port, "/api/predict?explain=1", data, args.requests)]
    finally:
        server.terminate()
        server.wait(10)
    for r in results:
        print(f"{r['path']}: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms ({r['faces']} face)")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
