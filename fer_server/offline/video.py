"""Offline analysis of a video file: annotated video and per-face CSV.

    python main.py --source in.mp4 --output annotated.mp4 --csv faces.csv

Runs the same ``FramePipeline`` as the server on every frame, as fast as the
CPU allows.  Outputs are written beside their final names and renamed into
place only when the whole video has been processed, so a failure never
leaves a partial file under the final name.
"""
import csv
import os
import time
from collections import Counter
from pathlib import Path

import cv2

from fer_server.atomic import temporary_path
from fer_server.capture.sources import SourceError, check_video_file, file_fps
from fer_server.face_csv import csv_header, face_row

FOURCC_BY_SUFFIX = {".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v", ".mp4": "mp4v", ".m4v": "mp4v"}


def analyse_video(source, pipeline, output=None, csv_path=None, progress=True, require_all_frames=False):
    """Process every frame of ``source``; write the annotated video and/or the CSV.

    Args:
        source: path of a video file.
        pipeline: a ``vision.pipeline.FramePipeline`` (tracking and smoothing apply).
        output: annotated video path (same size and frame rate as the
            input; MPEG-4 Part 2 for .mp4/.mov/.mkv, Motion JPEG for .avi).
        csv_path: one row per face per frame: ``frame,time_s,face_id,x,y,w,h,
            label,confidence`` and one probability column per class (lower case).
        progress: show a tqdm progress bar on stderr.
        require_all_frames: treat a video whose decoding stops short of the
            frame count its container declares (by more than 2 frames and
            2%) as broken: raise ``SourceError`` and write nothing.

    Returns:
        A summary dict: ``frames``, ``frames_with_face``, ``faces``,
        ``seconds`` (processing time), ``fps`` (frames processed per second),
        ``video_seconds``, ``share`` (``{label: fraction of face
        observations}``) and ``mean_confidence`` (mean top-class
        probability over face observations; 0.0 without faces).

    Raises:
        sources.SourceError: the input is missing or cannot be decoded.
        OSError: an output cannot be written.
    """
    from tqdm import tqdm

    check_video_file(source)
    cap = cv2.VideoCapture(str(source))
    fps = file_fps(cap)
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    labels = pipeline.classifier.labels
    temporaries = []
    writer = table = csv_file = None
    try:
        if output:
            temporaries.append((temporary_path(output), Path(output)))
            fourcc = FOURCC_BY_SUFFIX.get(Path(output).suffix.lower(), "mp4v")
            writer = cv2.VideoWriter(str(temporaries[-1][0]), cv2.VideoWriter_fourcc(*fourcc), fps,
                                     (width, height))
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot write a video to {output}")
        if csv_path:
            temporaries.append((temporary_path(csv_path), Path(csv_path)))
            csv_file = open(temporaries[-1][0], "w", newline="", encoding="utf-8")
            table = csv.writer(csv_file)
            table.writerow(csv_header(labels))
        pipeline.reset(restart_ids=True)  # face ids from 1, whatever this process analysed before
        counts = Counter()
        frames = frames_with_face = 0
        confidence_sum = 0.0
        started = time.perf_counter()
        with tqdm(total=total, unit="frame", disable=not progress, desc=Path(source).name) as bar:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if writer:
                    annotated, faces = pipeline.process(frame)
                    writer.write(annotated)
                else:  # nothing to draw on: skip the copy and the drawing
                    faces = pipeline.find_faces(frame)
                for face in faces:
                    counts[face.label] += 1
                    confidence_sum += face.confidence
                    if table:
                        table.writerow(face_row(frames, frames / fps, face, labels))
                frames += 1
                frames_with_face += bool(faces)
                bar.update()
        elapsed = time.perf_counter() - started
        if frames == 0:
            raise SourceError(f"video file {source} has no decodable frame")
        if require_all_frames and total and frames < total - max(2, 0.02 * total):
            raise SourceError(f"video file {source} stopped decoding after {frames} of its "
                              f"{total} frames")
        if writer:
            writer.release()
        if csv_file:
            csv_file.close()
        for tmp, final in temporaries:
            os.replace(tmp, final)
        temporaries = []
    finally:
        cap.release()
        if writer:
            writer.release()
        if csv_file:
            csv_file.close()
        for tmp, _ in temporaries:
            tmp.unlink(missing_ok=True)
    faces_total = sum(counts.values())
    return {"frames": frames, "frames_with_face": frames_with_face, "faces": faces_total,
            "seconds": round(elapsed, 2), "fps": round(frames / elapsed, 1),
            "video_seconds": round(frames / fps, 2),
            "share": {name: round(counts[name] / faces_total, 4) if faces_total else 0.0 for name in labels},
            "mean_confidence": round(confidence_sum / faces_total, 4) if faces_total else 0.0}


def summary_text(summary, source):
    """The one-paragraph summary printed at the end of an analysis."""
    share = sorted(summary["share"].items(), key=lambda kv: -kv[1])
    emotions = ", ".join(f"{name} {value:.0%}" for name, value in share if value > 0) or "no face found"
    return (f"{Path(source).name}: {summary['frames']} frames ({summary['video_seconds']:.1f} s of video) "
            f"analysed in {summary['seconds']:.1f} s ({summary['fps']:.0f} frames/s); "
            f"{summary['faces']} faces in {summary['frames_with_face']} frames. "
            f"Share of face observations per expression: {emotions}.")
