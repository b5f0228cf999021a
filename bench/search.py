"""The face search alone, spread over frames against all on one frame: what it finds and what each frame costs.

    python -m bench.search demo/demo.mp4 tests/fixtures/clip.mp4 Megamind.avi [--detect-every 10] [--json]

For each video, every frame goes through a ``vision.tracker.FaceTracker`` in
two modes, on the same decoded frames:

* ``whole``: the whole search on one frame in ``detect_every`` and on every
  frame without a tracked face (the search before the spread search,
  ``Config.spread_search`` off);
* ``spread``: one band of the scale pyramid per frame, unchanged bands
  skipped (``Config.still_threshold``), the whole search on a cut
  (``Config.cut_threshold``), as the server runs it.

It prints, per mode, the frames with at least one face and the faces
summed over frames, as served (every live track, including a box kept for
up to ``detect_every`` frames after its face was last found) and as seen
(tracks found on that frame), the frames whose face count differs from the
``whole`` mode's, and the search's ms per frame (p50, p95, p99, max; the
grayscale conversion excluded).

Counts of served boxes reward a box kept after its face has gone (the
whole mode keeps the last scene's faces for up to ``detect_every`` frames
after a cut), so each mode is also scored against a reference: the whole
search (``FaceDetector.detect``) run on every frame.  ``found`` is the
share of the reference's faces that a served box matches on their frame
(IoU >= 0.3, each box matching one face), ``unmatched`` the served boxes
that match no reference face on their frame: a box kept after its face
left, a face followed where the cascade missed it on that frame, or a
false detection.  The recall check of docs/benchmarks.md compares both
modes' counts and ``found``.
"""
import argparse
import json
import time

import cv2
import numpy as np

from fer_server.config import Config
from fer_server.vision.detector import FaceDetector
from fer_server.vision.tracker import FaceTracker, iou

MATCH_IOU = 0.3  # a served box matches a reference face: FaceTracker's match_iou


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


def matched(served, reference):
    """How many of ``reference``'s boxes a box of ``served`` matches (IoU >= MATCH_IOU), one to one, greedily."""
    pairs = sorted(((iou(a, b), i, j) for i, a in enumerate(served) for j, b in enumerate(reference)), reverse=True)
    used_served, used_reference = set(), set()
    for score, i, j in pairs:
        if score < MATCH_IOU:
            break
        if i not in used_served and j not in used_reference:
            used_served.add(i)
            used_reference.add(j)
    return len(used_reference)


def reference_faces(frames, config):
    """The whole search's boxes on every frame: a list of ``(N, 4)`` arrays."""
    detector = FaceDetector(config.scale_factor, config.min_neighbors, config.min_face_px, config.detect_width)
    return [detector.detect(gray) for gray in frames]


def run(frames, config, spread):
    """``(served boxes per frame, faces seen per frame, ms per frame)`` of a ``FaceTracker`` in one mode."""
    detector = FaceDetector(config.scale_factor, config.min_neighbors, config.min_face_px, config.detect_width)
    tracker = FaceTracker(detector, config.detect_every, still_threshold=config.still_threshold if spread else 0,
                          cut_threshold=config.cut_threshold if spread else 0, spread=spread)
    boxes, seen, ms = [], [], []
    for gray in frames:
        started = time.perf_counter()
        tracks = tracker.update(gray)
        ms.append((time.perf_counter() - started) * 1e3)
        boxes.append([t.box for t in tracks])
        seen.append(sum(t.missed == 0 for t in tracks))
    return boxes, np.array(seen), np.array(ms)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("videos", nargs="+")
    p.add_argument("--detect-every", type=int, default=Config.detect_every)
    p.add_argument("--still-threshold", type=float, default=Config.still_threshold)
    p.add_argument("--cut-threshold", type=float, default=Config.cut_threshold)
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = p.parse_args(argv)
    config = Config(detect_every=args.detect_every, still_threshold=args.still_threshold,
                    cut_threshold=args.cut_threshold)
    results = []
    for video in args.videos:
        frames = read_gray(video)
        reference = reference_faces(frames, config)
        whole = run(frames, config, spread=False)
        spread = run(frames, config, spread=True)
        whole_counts = np.array([len(b) for b in whole[0]])
        row = {"video": str(video), "frames": len(frames), "reference_faces": sum(map(len, reference))}
        for name, (boxes, seen, ms) in (("whole", whole), ("spread", spread)):
            counts = np.array([len(b) for b in boxes])
            found = sum(matched(b, r) for b, r in zip(boxes, reference))
            row[name] = {"frames_with_face": int((counts > 0).sum()), "faces": int(counts.sum()),
                         "frames_with_face_seen": int((seen > 0).sum()), "faces_seen": int(seen.sum()),
                         "found": round(found / max(1, row["reference_faces"]), 3),
                         "unmatched": int(counts.sum()) - found,
                         "frames_differing": int((counts != whole_counts).sum()),
                         **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
                         "max_ms": round(float(ms.max()), 2), "mean_ms": round(float(ms.mean()), 2)}
        w, s = row["whole"], row["spread"]
        print(f"{video}: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, "
              f"{row['reference_faces']} faces by the whole search on every frame")
        for name in ("whole", "spread"):
            r = row[name]
            print(f"  {name:6s} frames with a face {r['frames_with_face']:5d} (seen {r['frames_with_face_seen']:5d})  "
                  f"faces {r['faces']:5d} (seen {r['faces_seen']:5d})  "
                  f"found {r['found']:.3f}  unmatched {r['unmatched']:4d}  "
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
