"""The face search alone, spread over frames against all on one frame: what it finds and what each frame costs.

    python -m bench.search demo/demo.mp4 tests/fixtures/clip.mp4 Megamind.avi [--detect-every 10] [--json]

For each video, every frame goes through a ``vision.tracker.FaceTracker`` in
two modes, on the same decoded frames:

* ``whole``: the whole search on one frame in ``detect_every`` and on every
  frame without a tracked face (the search before the spread search,
  ``Config.spread_search`` off);
* ``spread``: one band of the scale pyramid per frame, unchanged bands
  skipped (``Config.still_threshold``), as the server runs it.

It prints, per mode, the frames with at least one face and the faces
summed over frames, as served (every live track, including a box kept for
up to ``detect_every`` frames after its face was last found) and as seen
(tracks found on that frame), the frames whose face count differs from the
``whole`` mode's, and the search's ms per frame (p50, p95, p99, max; the
grayscale conversion excluded).  The recall check of docs/benchmarks.md
compares the spread mode's counts with the whole mode's.
"""
import argparse
import json
import time

import cv2
import numpy as np

from fer_server.config import Config
from fer_server.vision.detector import FaceDetector
from fer_server.vision.tracker import FaceTracker


def read_gray(path):
    """Every frame of a video as ``(H, W)`` uint8 grayscale."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    cap.release()
    if not frames:
        raise SystemExit(f"error: {path} is not a video OpenCV can decode")
    return frames


def run(frames, config, spread):
    """``(faces per frame, ms per frame)`` of a ``FaceTracker`` in one mode over ``frames``."""
    detector = FaceDetector(config.scale_factor, config.min_neighbors, config.min_face_px, config.detect_width)
    tracker = FaceTracker(detector, config.detect_every, still_threshold=config.still_threshold if spread else 0,
                          spread=spread)
    counts, seen, ms = [], [], []
    for gray in frames:
        started = time.perf_counter()
        tracks = tracker.update(gray)
        ms.append((time.perf_counter() - started) * 1e3)
        counts.append(len(tracks))
        seen.append(sum(t.missed == 0 for t in tracks))
    return np.array(counts), np.array(seen), np.array(ms)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("videos", nargs="+")
    p.add_argument("--detect-every", type=int, default=Config.detect_every)
    p.add_argument("--still-threshold", type=float, default=Config.still_threshold)
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = p.parse_args(argv)
    config = Config(detect_every=args.detect_every, still_threshold=args.still_threshold)
    results = []
    for video in args.videos:
        frames = read_gray(video)
        whole = run(frames, config, spread=False)
        spread = run(frames, config, spread=True)
        row = {"video": str(video), "frames": len(frames)}
        for name, (counts, seen, ms) in (("whole", whole), ("spread", spread)):
            row[name] = {"frames_with_face": int((counts > 0).sum()), "faces": int(counts.sum()),
                         "frames_with_face_seen": int((seen > 0).sum()), "faces_seen": int(seen.sum()),
                         "frames_differing": int((counts != whole[0]).sum()),
                         **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
                         "max_ms": round(float(ms.max()), 2), "mean_ms": round(float(ms.mean()), 2)}
        w, s = row["whole"], row["spread"]
        print(f"{video}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}")
        for name in ("whole", "spread"):
            r = row[name]
            print(f"  {name:6s} frames with a face {r['frames_with_face']:5d} (seen {r['frames_with_face_seen']:5d})  "
                  f"faces {r['faces']:5d} (seen {r['faces_seen']:5d})  "
                  f"frames differing {r['frames_differing']:4d}  search ms p50/p95/p99/max "
                  f"{r['p50_ms']:.2f}/{r['p95_ms']:.2f}/{r['p99_ms']:.2f}/{r['max_ms']:.2f} (mean {r['mean_ms']:.2f})")
        print(f"  spread / whole: frames with a face {s['frames_with_face'] / max(1, w['frames_with_face']):.3f} "
              f"(seen {s['frames_with_face_seen'] / max(1, w['frames_with_face_seen']):.3f}), faces "
              f"{s['faces'] / max(1, w['faces']):.3f} (seen {s['faces_seen'] / max(1, w['faces_seen']):.3f}), "
              f"p95 {s['p95_ms'] / w['p95_ms']:.2f}x", flush=True)
        results.append(row)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
