"""Frames delivered to concurrent MJPEG clients by the real server, and its CPU use.

    python -m bench.clients --source demo --clients 1,5 --seconds 10

Starts ``python main.py`` on a free 127.0.0.1 port, measures the time from
launch to the first JPEG received, then for each client count N opens N
concurrent ``GET /video_feed`` connections for ``--seconds`` seconds and
reports the frames per second each client received and the server
process's CPU use (percent of one core, from ``/proc/PID/stat``).
"""
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


def read_parts(port, seconds, counts, index, first_part=None, headers=None):
    """Count the MJPEG parts of ``/video_feed`` received within ``seconds`` (``headers``: e.g. the token)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/video_feed", headers=headers or {})
    response = conn.getresponse()
    boundary = b"--frame\r\n"
    deadline = time.monotonic() + seconds
    buffer = b""
    try:
        while time.monotonic() < deadline:
            chunk = response.read1(65536)
            if not chunk:
                break
            buffer += chunk
            n = buffer.count(boundary)
            if n:
                counts[index] += n
                if first_part is not None and not first_part.is_set():
                    first_part.set()
                buffer = buffer[buffer.rfind(boundary) + len(boundary):]
    finally:
        conn.close()


def start_server(source, port, extra=()):
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--source", source,
                             "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def wait_first_frame(server, port, timeout_s=120, headers=None):
    """Seconds from now until the first MJPEG part arrives from a fresh server."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            first = threading.Event()
            read_parts(port, 0.5, [0], 0, first, headers)
            if first.is_set():
                return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    raise SystemExit("no frame from the server within the timeout")


def measure(server, port, clients, seconds):
    counts = [0] * clients
    threads = [threading.Thread(target=read_parts, args=(port, seconds, counts, i)) for i in range(clients)]
    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
    fps = [c / seconds for c in counts]
    return {"clients": clients, "fps_per_client_mean": round(sum(fps) / clients, 2),
            "fps_per_client_min": round(min(fps), 2),
            "server_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1)}


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="demo", help="what main.py streams (default: demo)")
    p.add_argument("--clients", default="1,5", help="comma-separated client counts")
    p.add_argument("--seconds", type=float, default=10.0)
    args, extra = p.parse_known_args(argv)  # the rest are main.py's flags (server settings)
    result = run_clients(args.source, [int(v) for v in args.clients.split(",")], args.seconds, extra)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
