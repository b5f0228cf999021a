"""Benchmark the frame pipeline on a video, as fast as the CPU allows.

    python -m bench --source video.mp4 [--seconds 10] [--baseline] [--fer] [--json]
    python -m bench --source video.mp4 --clients 50 [--seconds 10] [--json]

The fast path is the server's own code: a ``capture.camera.Camera`` without frame-rate
pacing, running the configured ``vision.pipeline.FramePipeline`` (decode, detect or
track, classify, draw, JPEG-encode) on the video, looped until ``--seconds``
have passed and at least once through.  ``--baseline`` also runs the naive
pipeline (full-resolution Haar on every frame with scaleFactor 1.1 and
minNeighbors 5, one ``model.predict`` call per face) on one pass of the same
video and prints both side by side.  ``--fer`` also runs the ``fer`` package
(Shenk et al., https://github.com/justinshenk/fer; ``FER(mtcnn=False)``: its Haar
cascade and its 64x64 Keras classifier, one ``detect_emotions`` call per
frame, timed as ``detect``, which holds its classification too) on one pass,
then draws and encodes as the others do; it is not a requirement of this
project: ``docs/benchmarks.md`` says how to install it beside ours.  Face
counts compare the first pass of each.  ``--clients N`` instead serves the video through ``main.py`` and reads
``/video_feed`` with 1 and then N concurrent clients (see ``bench.clients``).
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fer_server.config import add_config_arguments, config_from_args

STAGES = ("decode", "detect", "classify", "draw", "encode")


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def summarise(name, records, pass_frames, wall_s, cpu_s, lags=None, background_faces=None):
    """Figures of one run; ``records`` holds ``(timings dict, number of faces)`` per frame, ``lags`` the
    pipeline's ``label_lag`` per frame (None: every face classified on its frame), ``background_faces``
    the faces the background classifier classified in the run."""
    first = records[:pass_frames]
    totals = np.array([t["total"] for t, _ in records])
    stages = {}
    for stage in STAGES:
        values = np.array([t.get(stage, 0.0) for t, _ in records])
        stages[stage] = {"mean": round(float(values.mean()), 3),
                         "p50": round(float(np.percentile(values, 50)), 3),
                         "p95": round(float(np.percentile(values, 95)), 3),
                         "p99": round(float(np.percentile(values, 99)), 3)}
    return {
        "pipeline": name, "frames": len(records), "seconds": round(wall_s, 2),
        "fps": round(len(records) / wall_s, 1),
        "p50_ms": round(float(np.percentile(totals, 50)), 2),
        "p95_ms": round(float(np.percentile(totals, 95)), 2),
        "p99_ms": round(float(np.percentile(totals, 99)), 2),
        "pass_frames": len(first),
        "frames_with_face": sum(1 for _, n in first if n),
        "faces_classified": sum(n for _, n in first),
        "cpu_percent": round(100 * cpu_s / wall_s, 1),
        "stages": stages,
        **label_lag_figures(records, lags, wall_s, background_faces),
    }


def label_lag_figures(records, lags, wall_s, background_faces):
    """How late the labels shown were, over the frames with a face: the frames between a frame and the
    oldest crop behind one of its labels (p50, p95, max), and that in ms at the run's frame rate."""
    if lags is None:
        return {"label_lag_frames": {"p50": 0, "p95": 0, "max": 0}, "label_lag_ms_p95": 0.0,
                "background_faces_per_s": 0.0}
    with_face = np.array([lag for (_, n), lag in zip(records, lags) if n]) if records else np.zeros(0)
    if with_face.size == 0:
        with_face = np.zeros(1)
    frame_ms = wall_s * 1e3 / max(1, len(records))
    p95 = float(np.percentile(with_face, 95))
    return {"label_lag_frames": {"p50": float(np.percentile(with_face, 50)), "p95": p95,
                                 "max": int(with_face.max())},
            "label_lag_ms_p95": round(p95 * frame_ms, 1),
            "background_faces_per_s": round((background_faces or 0) / wall_s, 1)}


def run_fast(source, config, seconds, pass_frames):
    """The server's own Camera + FramePipeline, unpaced."""
    from fer_server.builders import build_background, build_classifier, build_pipeline
    from fer_server.capture.camera import Camera

    classifier = build_classifier(config)
    background = build_background(config, classifier)
    pipeline = build_pipeline(config, classifier, background=background)
    records, lags = [], []

    def on_frame(frame):
        records.append((frame.timings, len(frame.faces)))
        lags.append(pipeline.label_lag)

    camera = Camera(str(source), pipeline, loop=True, pace=False, jpeg_quality=config.jpeg_quality,
                    on_frame=on_frame)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for _ in camera.frames():
        if time.perf_counter() - t0 >= seconds and len(records) >= pass_frames:
            break
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    camera.close()
    if background is None:
        return summarise("fast", records, pass_frames, wall, cpu)
    background.close()
    return summarise("fast", records, pass_frames, wall, cpu, lags, background.faces_classified)


def run_one_pass(name, source, config, seconds, analyse):
    """One pass of ``source`` (at most ``max(seconds, 120)`` s) through another pipeline's ``analyse``:
    ``analyse(BGR frame)`` gives ``(faces, {"detect": ms, "classify": ms})``; the faces are then drawn
    by our ``draw_faces`` and the frame JPEG-encoded at ``config.jpeg_quality``, as the fast path does."""
    from fer_server.vision.frames import draw_faces

    cap = cv2.VideoCapture(str(source))
    records = []
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    while True:
        s = time.perf_counter()
        ok, frame = cap.read()
        if not ok:
            break
        d = time.perf_counter()
        faces, stages = analyse(frame)
        c = time.perf_counter()
        annotated = draw_faces(frame.copy(), faces)
        w = time.perf_counter()
        cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
        e = time.perf_counter()
        records.append(({"decode": (d - s) * 1e3, **stages, "draw": (w - c) * 1e3, "encode": (e - w) * 1e3,
                         "total": (e - s) * 1e3}, len(faces)))
        if time.perf_counter() - t0 > max(seconds, 120):
            break
    cap.release()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return summarise(name, records, len(records), wall, cpu)


def run_baseline(source, config, seconds):
    """The naive pipeline: full-resolution Haar every frame, model.predict per face."""
    from fer_server.model.files import load_model
    from fer_server.vision.detector import CASCADE_FILE
    from fer_server.vision.frames import Face, crop_faces

    model, info = load_model(config.model_path, config.weights_path, input_range=config.input_range,
                             class_names=config.class_names)
    labels = info.labels
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
    model.predict(np.zeros((1, 48, 48, 1), np.float32), verbose=0)

    def analyse(frame):
        d = time.perf_counter()
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        boxes = np.asarray(cascade.detectMultiScale(gray, 1.1, 5)).reshape(-1, 4)
        t = time.perf_counter()
        faces = []
        for box in boxes:
            p = model.predict(crop_faces(gray, box[None]), verbose=0)[0]
            best = int(np.argmax(p))
            faces.append(Face(tuple(box), labels[best], float(p[best])))
        return faces, {"detect": (t - d) * 1e3, "classify": (time.perf_counter() - t) * 1e3}

    return run_one_pass("baseline", source, config, seconds, analyse)


def load_fer_package():
    """The ``fer`` package's ``FER(mtcnn=False)`` detector; exits with a sentence when it cannot be imported."""
    try:
        from fer import FER
    except ImportError as e:
        sys.exit(f"error: --fer needs the fer package ({e}); docs/benchmarks.md says how to install it")
    return FER(mtcnn=False)


def run_fer_package(detector, source, config, seconds):
    """The ``fer`` package on one pass of ``source``: ``detect_emotions`` per frame, then draw and encode.

    Its search and classification are one call, timed as ``detect``
    (``classify`` stays 0); the boxes are drawn with its top emotion.
    """
    from fer_server.vision.frames import Face

    def analyse(frame):
        d = time.perf_counter()
        found = detector.detect_emotions(frame)
        detect_ms = (time.perf_counter() - d) * 1e3
        faces = []
        for face in found:
            label, score = max(face["emotions"].items(), key=lambda item: item[1])
            faces.append(Face(tuple(int(v) for v in face["box"]), label.capitalize(), float(score)))
        return faces, {"detect": detect_ms, "classify": 0.0}

    return run_one_pass("fer", source, config, seconds, analyse)


def print_table(results):
    """The figures side by side; with more than one pipeline, the first one's figures over each other's."""
    names = [r["pipeline"] for r in results]
    rows = [("frames", "frames"), ("fps", "fps"), ("p50 ms / frame", "p50_ms"),
            ("p95 ms / frame", "p95_ms"), ("p99 ms / frame", "p99_ms"),
            ("frames with a face (1st pass)", "frames_with_face"),
            ("faces classified (1st pass)", "faces_classified"), ("CPU % of one core", "cpu_percent"),
            ("label lag p95, ms", "label_lag_ms_p95"), ("background faces / s", "background_faces_per_s")]
    others = results[1:]
    print(f"{'':32s}" + "".join(f"{n:>30s}" for n in names) + "".join(f"{names[0] + '/' + o['pipeline']:>16s}"
                                                                     for o in others))
    for label, key in rows:
        print(f"{label:32s}" + "".join(f"{r[key]:>30}" for r in results)
              + "".join(f"{results[0][key] / o[key]:>16.2f}" if o[key] else f"{'':>16s}" for o in others))
    for stage in STAGES:
        print(f"{stage + ' ms mean/p50/p95/p99':32s}" + "".join(
            f"{'{mean:.2f}/{p50:.2f}/{p95:.2f}/{p99:.2f}'.format(**r['stages'][stage]):>30s}" for r in results))


def config_flags(argv):
    """The server-setting flags of ``argv`` (everything but this script's own), for ``main.py``."""
    own = {"--source": 1, "--seconds": 1, "--clients": 1, "--baseline": 0, "--fer": 0, "--json": 0}
    out, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in own:
            i += 1 + (own[name] if "=" not in argv[i] else 0)
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="a video file")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--baseline", action="store_true", help="also run the naive pipeline")
    p.add_argument("--fer", action="store_true", help="also run the fer package (pip install fer; see docs/benchmarks.md)")
    p.add_argument("--clients", type=int, help="serve through main.py to N HTTP clients instead")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    add_config_arguments(p.add_argument_group("server settings (config.Config)"),
                         exclude=("host", "port", "source"))
    args = p.parse_args(argv)
    source = Path(args.source)
    if not source.is_file() or count_frames(source) == 0:
        sys.exit(f"error: {source} is not a video OpenCV can decode")

    if args.clients:
        from bench.clients import run_clients

        result = run_clients(str(source), [1, args.clients], args.seconds, config_flags(argv or sys.argv[1:]))
        if args.json:
            print(json.dumps(result))
        return

    config = config_from_args(args, source=str(source))
    cap = cv2.VideoCapture(str(source))
    size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
    video_fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    pass_frames = count_frames(source)
    print(f"{source.name}: {size}, {pass_frames} frames at {video_fps:g} fps; "
          f"detect_every={config.detect_every}, detect_width={config.detect_width}, backend={config.backend}",
          flush=True)
    fer_detector = load_fer_package() if args.fer else None
    results = [run_fast(source, config, args.seconds, pass_frames)]
    if args.baseline:
        results.append(run_baseline(source, config, args.seconds))
    if fer_detector is not None:
        results.append(run_fer_package(fer_detector, source, config, args.seconds))
    print_table(results)
    if args.json:
        out = dict(results[0], video=source.name, size=size, video_fps=video_fps)
        for other in results[1:]:
            name = other["pipeline"]
            out[name] = other
            out["speedup" if name == "baseline" else f"speedup_{name}"] = round(results[0]["fps"] / other["fps"], 2)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
