"""Serve live facial expression recognition over HTTP.

    python main.py                      # webcam 0, or the demo clip without one
    python main.py --source video.mp4   # a video file, looped
    python main.py --source demo        # the bundled demo clip
    python main.py --source in.mp4 --output annotated.mp4 --csv faces.csv   # offline, no server

Then open http://127.0.0.1:5000.
"""
import argparse
import ctypes
import logging
import os
import sys
from pathlib import Path

from batch import add_batch_arguments, run_from_args
from config import BACKENDS, Config


def parse_args(argv=None):
    defaults = Config()
    p = argparse.ArgumentParser(description="Live facial expression recognition server (MJPEG over HTTP).")
    p.add_argument("--source", default=defaults.source,
                   help="webcam index (0), video file, stream URL (rtsp://, http://) or 'demo' "
                        "(default: %(default)s; without a webcam the demo clip is streamed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")
    p.add_argument("--model", default=str(defaults.model_path), help="Keras JSON architecture")
    p.add_argument("--weights", default=str(defaults.weights_path), help="classic Keras HDF5 weights")
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                   help="classifier inference path (default: %(default)s)")
    p.add_argument("--no-loop", action="store_true", help="end the stream at the end of a video file")
    p.add_argument("--max-clients", type=int, default=defaults.max_clients,
                   help="concurrent stream viewers; more get 503 (default: %(default)s)")
    p.add_argument("--debug", action="store_true",
                   help="serve with Flask's development server (reloader off) instead of uvicorn")
    p.add_argument("--output", help="analyse the --source video offline (no server) and write it "
                                    "annotated to this file (.mp4 or .avi)")
    p.add_argument("--csv", help="analyse the --source video offline and write one row per face "
                                 "per frame to this CSV file")
    add_batch_arguments(p)
    return p.parse_args(argv)


def config_from_args(args):
    return Config(source=args.source, model_path=Path(args.model), weights_path=Path(args.weights),
                  loop=not args.no_loop, max_clients=args.max_clients, backend=args.backend)


def limit_malloc_arenas(arenas=2):
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``, like ``MALLOC_ARENA_MAX=2``).

    glibc gives threads their own arenas, up to 8 per core, and freed
    buffers scattered over them keep resident memory creeping up.  Measured
    when every viewer had a worker thread (waitress, before ``server.py``),
    with ``python -m bench.load --clients 20 --rps 2 --seconds 180 --churn
    15``: 776 -> 1008 MB and still rising by default, flat at 871 MB from
    the 40th second with 2 arenas.  Kept for the threads that run Flask
    and TensorFlow.  Does nothing off glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    limit_malloc_arenas()  # before TensorFlow and the server start their threads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    if args.csv_dir:
        return run_from_args(args, config_from_args(args))
    if args.output or args.csv:
        return analyse(args)
    from app import create_app  # deferred: --help should not wait for TensorFlow
    from camera import SourceError
    from classifier import ModelLoadError
    from server import serve

    config = config_from_args(args)
    try:
        app = create_app(config)
    except (ModelLoadError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    camera = app.extensions["camera"]
    logging.info("serving %s on http://%s:%d", camera.name, args.host, args.port)
    try:
        if args.debug:
            app.run(host=args.host, port=args.port, threaded=True, debug=True, use_reloader=False)
        else:
            serve(app, config, args.host, args.port)
    finally:
        camera.close()  # release the webcam or file
    return 0


def analyse(args):
    """Offline mode: analyse --source into --output and/or --csv; returns the exit code."""
    from analyse import analyse_video, summary_text
    from builders import build_pipeline
    from camera import SourceError
    from classifier import ModelLoadError

    if args.source.strip().isdigit() or "://" in args.source:
        print("error: --output and --csv analyse a video file; give its path with --source",
              file=sys.stderr)
        return 2
    try:
        pipeline = build_pipeline(config_from_args(args))
        summary = analyse_video(args.source, pipeline, args.output, args.csv)
    except (ModelLoadError, SourceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_text(summary, args.source))
    for path in (args.output, args.csv):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
