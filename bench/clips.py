"""Three 640-pixel-wide clips at 25-30 fps for the many-sources benchmark, from media found on most machines.

    python -m bench.clips OUT_DIR [--data /usr/share/doc/opencv-doc/examples/data]

Writes (MJPG in .avi, so every OpenCV build decodes them):

* ``talk25.avi``: OpenCV's ``Megamind.avi`` (a talking head, 270 frames)
  scaled to 640x470, declared at 25 fps;
* ``walk25.avi``: OpenCV's ``vtest.avi`` (pedestrians seen from above,
  mostly without a face the cascade finds: the frames the old search paid
  most for), scaled to 640x480, first 300 frames, 25 fps;
* ``faces30.avi``: the bundled ``demo/demo.mp4`` (FER2013 faces on a
  background, 640x360), declared at 30 fps.

``apt-get install opencv-doc`` installs the OpenCV sample data.
"""
import argparse
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
CLIPS = (("talk25.avi", "Megamind.avi", (640, 470), 25.0, None),
         ("walk25.avi", "vtest.avi", (640, 480), 25.0, 300),
         ("faces30.avi", None, (640, 360), 30.0, None))


def write_clip(src, dst, size, fps, limit=None):
    """Re-encode ``src`` scaled to ``size`` (pixels) at ``fps``; returns the frame count."""
    cap = cv2.VideoCapture(str(src))
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    n = 0
    while limit is None or n < limit:
        ok, frame = cap.read()
        if not ok:
            break
        out.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        n += 1
    cap.release()
    out.release()
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--data", type=Path, default=Path("/usr/share/doc/opencv-doc/examples/data"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, src, size, fps, limit in CLIPS:
        src = args.data / src if src else ROOT / "demo" / "demo.mp4"
        if not src.is_file():
            sys.exit(f"error: {src} is missing (apt-get install opencv-doc)")
        n = write_clip(src, args.out / name, size, fps, limit)
        print(f"wrote {args.out / name}: {n} frames, {size[0]}x{size[1]}, {fps:g} fps")


if __name__ == "__main__":
    main()
