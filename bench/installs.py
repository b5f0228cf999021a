"""The full install against the serve-only one: size, start-up, frames/s and labels, side by side.

    python -m bench.installs --python .venv/bin/python --python .venv-serve/bin/python --source CLIP [--runs 2]

For each interpreter (a venv's ``bin/python``), in turn and ``--runs`` times
alternating:

* **size**: bytes under the venv's ``sys.prefix`` (files, links not followed);
* **start-up**: ``python main.py --source CLIP`` launched with an empty
  model cache (``FER_SERVER_CACHE`` a new folder, so the full install
  converts its model as on a first start); seconds from launch until
  ``/healthz`` answers and until the first MJPEG frame arrives;
* **frames/s**: ``python main.py --source CLIP --csv OUT`` (offline
  analysis, every frame, no frame-rate cap), the rate its summary line prints
  (analysis only, start-up excluded);
* **labels**: the first run's CSV rows of each interpreter compared with the
  first interpreter's by ``(frame, face_id)``: rows whose label differs, and
  rows only one of them has.

``pip install`` time is not measured here (it depends on the network and
pip's cache); docs/serving.md gives it with its command.
"""
import argparse
import csv
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench.clients import ROOT, free_port, start_server, wait_first_frame, wait_healthz

SUMMARY = re.compile(r"analysed in ([\d.]+) s \((\d+) frames/s\)")


def venv_bytes(python):
    """Bytes of the files under the interpreter's ``sys.prefix`` (symbolic links not followed)."""
    prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                            check=True).stdout.strip()
    total = 0
    for folder, _, files in os.walk(prefix):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def has_tensorflow(python):
    done = subprocess.run([python, "-c", "import importlib.util as u; print(bool(u.find_spec('tensorflow')))"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip() == "True"


def start_up(python, source):
    """``(seconds to /healthz, seconds to the first frame)`` from launching ``main.py``, model cache empty."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, FER_SERVER_CACHE=cache)
        port = free_port()
        launched = time.monotonic()
        server = start_server(source, port, python=python, env=env)
        try:
            wait_healthz(server, port)
            healthz = time.monotonic() - launched
            wait_first_frame(server, port)
            return round(healthz, 2), round(time.monotonic() - launched, 2)
        finally:
            server.terminate()
            server.wait(10)


def offline(python, source, csv_path):
    """Frames/s of ``main.py --source VIDEO --csv`` as its summary line reports it."""
    done = subprocess.run([python, str(ROOT / "main.py"), "--source", str(source), "--csv", str(csv_path)],
                          capture_output=True, text=True, cwd=ROOT)
    found = SUMMARY.search(done.stderr + done.stdout)
    if done.returncode or not found:
        raise SystemExit(f"offline analysis failed with {python}: {(done.stderr or done.stdout)[-2000:]}")
    return float(found.group(2))


def read_labels(path):
    with open(path, newline="") as f:
        return {(row["frame"], row["face_id"]): row["label"] for row in csv.DictReader(f)}


def compare(reference, other):
    """``{"rows", "same_label", "label_differs", "only_one"}`` over the ``(frame, face_id)`` rows of two CSVs."""
    a, b = read_labels(reference), read_labels(other)
    both = a.keys() & b.keys()
    same = sum(a[k] == b[k] for k in both)
    return {"rows": len(a.keys() | b.keys()), "same_label": same, "label_differs": len(both) - same,
            "only_one": len(a.keys() ^ b.keys())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", action="append", required=True, help="an interpreter (repeat for each install)")
    p.add_argument("--source", required=True, help="a video file")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    args = p.parse_args(argv)
    results = {python: {"python": python, "venv_mb": round(venv_bytes(python) / 1e6),
                        "tensorflow": has_tensorflow(python), "healthz_s": [], "first_frame_s": [], "fps": []}
               for python in args.python}
    with tempfile.TemporaryDirectory() as out:
        for run in range(args.runs):
            for i, python in enumerate(args.python):
                r = results[python]
                healthz, first = start_up(python, args.source)
                r["healthz_s"].append(healthz)
                r["first_frame_s"].append(first)
                r["fps"].append(offline(python, args.source, Path(out) / f"{i}-{run}.csv"))
                print(f"{python} (TensorFlow {'yes' if r['tensorflow'] else 'no'}, {r['venv_mb']} MB): /healthz "
                      f"{healthz:.2f} s, first frame {first:.2f} s after launch; offline {r['fps'][-1]:.0f} "
                      f"frames/s", flush=True)
        for i, python in enumerate(args.python[1:], 1):
            results[python]["labels_vs_first"] = compare(Path(out) / "0-0.csv", Path(out) / f"{i}-0.csv")
            c = results[python]["labels_vs_first"]
            print(f"{python} against {args.python[0]}: {c['same_label']} of {c['rows']} face rows with the same "
                  f"label, {c['label_differs']} differ, {c['only_one']} in one CSV only")
    if args.json:
        print(json.dumps(list(results.values())))


if __name__ == "__main__":
    main()
