"""Build the demo clip (and the test fixtures) from FER2013 PublicTest faces.

    python -m demo.make_demo_clip --data path/to/fer2013.csv.gz
    python -m demo.make_demo_clip --data path/to/fer2013.csv.gz --out tests/fixtures/clip.mp4 \
        --size 320x240 --seconds 3 --faces-per-scene 1 --faces-dir tests/fixtures/faces

Real faces with varied expressions: PublicTest images of every FER2013 class
that OpenCV's Haar cascade finds when enlarged, upscaled (bicubic), placed
on a plain background and drifting a little, a few seconds per scene.  The
clip is MPEG-4 Part 2 (``mp4v``), which every OpenCV build writes and reads.
"""
import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np

from fer_server.model.files import FER2013_LABELS
from fer_server.vision.detector import FaceDetector
from train.data import load_fer2013_csv


def detectable(face, detector, sides=(110, 150, 190)):
    """True when the Haar cascade finds the face enlarged to every side in ``sides`` (pixels)."""
    for side in sides:
        canvas = np.full((side + 80, side + 80), 170, np.uint8)
        canvas[40:40 + side, 40:40 + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        if len(detector.detect(canvas)) != 1:
            return False
    return True


def pick_faces(images, labels, per_class, seed):
    """``per_class`` detectable PublicTest faces of each class, in a fixed random order."""
    rng = np.random.default_rng(seed)
    detector = FaceDetector()
    chosen = []
    for cls in range(len(FER2013_LABELS)):
        candidates = rng.permutation(np.flatnonzero(labels == cls))
        found = itertools.islice((i for i in candidates if detectable(images[i], detector)), per_class)
        chosen += [(int(i), cls) for i in found]
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]


def render(faces, out, width, height, fps, seconds, per_scene):
    """Write the clip: scenes of ``per_scene`` faces side by side, each drifting slowly."""
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"error: OpenCV cannot write {out}")
    frames = int(seconds * fps)
    scenes = [faces[i:i + per_scene] for i in range(0, len(faces) - per_scene + 1, per_scene)]
    frames_per_scene = max(1, frames // len(scenes))
    side = int(min(height * 0.55, width / per_scene * 0.6))
    background = np.tile(np.linspace(150, 200, width, dtype=np.float32), (height, 1)).astype(np.uint8)
    for n in range(frames):
        scene = scenes[min(n // frames_per_scene, len(scenes) - 1)]
        t = n / fps
        frame = background.copy()
        for k, face in enumerate(scene):
            s = int(side * (1 + 0.06 * np.sin(2 * np.pi * t / 3.1 + k)))
            cx = width * (k + 0.5) / per_scene + 0.04 * width * np.sin(2 * np.pi * t / 4.3 + 2 * k)
            cy = height * 0.5 + 0.05 * height * np.cos(2 * np.pi * t / 3.7 + k)
            x, y = int(cx - s / 2), int(cy - s / 2)
            frame[y:y + s, x:x + s] = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return frames


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FER2013 CSV (plain or .gz) with PublicTest rows")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "demo.mp4"))
    p.add_argument("--size", default="640x360", help="WIDTHxHEIGHT in pixels")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--seconds", type=float, default=24.0)
    p.add_argument("--faces-per-scene", type=int, default=2)
    p.add_argument("--per-class", type=int, default=2, help="faces of each class")
    p.add_argument("--faces-dir", help="also save one 48x48 PNG per class here (test fixtures)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    images, labels = load_fer2013_csv(args.data)["PublicTest"]
    faces = pick_faces(images, labels, args.per_class, args.seed)
    frames = render([images[i] for i, _ in faces], args.out, width, height, args.fps,
                    args.seconds, args.faces_per_scene)
    print(f"wrote {args.out}: {frames} frames, {width}x{height} at {args.fps:g} fps, "
          f"{Path(args.out).stat().st_size / 1e6:.2f} MB; PublicTest rows "
          + ", ".join(f"{i} ({FER2013_LABELS[c]})" for i, c in faces))
    if args.faces_dir:
        Path(args.faces_dir).mkdir(parents=True, exist_ok=True)
        for i, c in faces:
            path = Path(args.faces_dir) / f"{FER2013_LABELS[c].lower()}.png"
            if not path.exists():
                cv2.imwrite(str(path), images[i])


if __name__ == "__main__":
    main()
