"""Serve live facial expression recognition over HTTP, or analyse a video file offline.

    python main.py                      # webcam 0, or the demo clip without one
    python main.py --source video.mp4   # a video file, looped
    python main.py --source demo        # the bundled demo clip
    python main.py --source in.mp4 --output annotated.mp4 --csv faces.csv   # offline, no server

Then open http://127.0.0.1:5000.  Every setting of ``config.Config`` is a
flag (``python main.py --help``) and an environment variable
(``FER_SERVER_<SETTING>``).  ``pip install .`` installs the same command as
``fer-server``.
"""
import argparse
import ctypes
import dataclasses
import ipaddress
import logging
import os
import re
import secrets
import socket
import sys
import time

from fer_server.offline.batch import add_batch_arguments, run_from_args
from fer_server.config import add_config_arguments, config_from_args


def parse_args(argv=None):
    """The command line: every ``Config`` field, ``--debug``, ``--output``, ``--csv`` and the batch flags.

    Raises:
        SystemExit: ``--help``, or a flag or ``FER_SERVER_*`` variable that does not parse (code 2).
    """
    p = argparse.ArgumentParser(prog="fer-server",
                                description="Live facial expression recognition server (MJPEG over HTTP).")
    try:
        add_config_arguments(p)
    except ValueError as e:
        p.error(str(e))
    p.add_argument("--debug", action="store_true",
                   help="log every request and Flask's tracebacks (the same server, more output)")
    p.add_argument("--output", help="analyse the --source video offline (no server) and write it "
                                    "annotated to this file (.mp4 or .avi)")
    p.add_argument("--csv", help="analyse the --source video offline and write one row per face "
                                 "per frame to this CSV file")
    add_batch_arguments(p)
    from fer_server.config import join_input_range_argv  # "--input-range -1,1" is not an option

    return p.parse_args(join_input_range_argv(sys.argv[1:] if argv is None else argv))


def limit_malloc_arenas(arenas=2):
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX)``, like ``MALLOC_ARENA_MAX=2``).

    glibc gives threads their own arenas, up to 8 per core, and freed
    buffers scattered over them keep resident memory creeping up under many
    threads (docs/benchmarks.md: the memory soak).  Does nothing off glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX
    except (OSError, AttributeError):
        pass


#: Characters an access token may hold: it travels in a URL, a header and a cookie as it is.
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{8,}$")


def is_loopback(host):
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(config):
    """The ``Config`` the server runs with, its access token decided.

    A given token is kept; without one, a server on a non-loopback address
    gets a new random one (``secrets.token_urlsafe``, 192 bits) unless
    ``no_token`` is set, which is logged as a warning there.

    Raises:
        ValueError: a token that is too short or holds other characters than
            ``TOKEN_PATTERN``'s, or ``--token`` with ``--no-token``.
    """
    if config.token is not None:
        if config.no_token:
            raise ValueError("--token and --no-token contradict each other")
        if not TOKEN_PATTERN.match(config.token):
            raise ValueError("the access token needs 8 or more letters, digits or '-._~'")
        return config
    if is_loopback(config.host):
        return config
    if config.no_token:
        logging.warning("serving on %s without an access token (--no-token): anyone who can reach "
                        "this address can watch the camera and use the API", config.host)
        return config
    return dataclasses.replace(config, token=secrets.token_urlsafe(24))


def server_url(config):
    """The URL to open, with ``?token=`` when the server asks for one."""
    scheme = "https" if config.certfile else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    token = f"/?token={config.token}" if config.token else ""
    return f"{scheme}://{host}:{config.port}{token}"


def preflight(config, offline=False):
    """The cheap start-up checks, before TensorFlow loads (which takes seconds).

    Checks each source's name (``capture.camera_set.parse_source_specs``), that each
    file source exists, that the model files (and the TLS files, if any)
    exist and, for the server, that the ``--record`` folder can be written
    and ``host:port`` can be bound.

    Returns:
        The bound listening socket for the server (None offline), so no
        other process can take the port before the server starts.

    Raises:
        sources.SourceError: a missing video file, or (offline) a source that
            is not a file or more than one source.
        cameras.SourceNameError: two sources with one name, or a name that
            is not URL-safe (a ``ValueError``).
        model_files.ModelLoadError: a missing model file.
        OSError: the port cannot be bound (in use, or not allowed), a TLS
            file is missing, or the record folder cannot be written, with a
            sentence saying so.
    """
    from fer_server.capture.camera_set import parse_source_specs
    from fer_server.model.files import ModelLoadError
    from fer_server.config import source_specs
    from fer_server.capture.sources import SourceError, check_file_exists, is_url, parse_source

    pairs = parse_source_specs(source_specs(config))
    if offline and len(pairs) > 1:
        raise SourceError("--output and --csv analyse one video file; give one --source")
    for _, text in pairs:
        source = parse_source(text)
        if offline:
            if isinstance(source, int) or is_url(source) or source == "demo":
                raise SourceError("--output and --csv analyse a video file; give its path with --source")
            check_file_exists(source)
        elif source == "demo":
            check_file_exists(config.demo_clip)
        elif isinstance(source, str) and not is_url(source):
            check_file_exists(source)
    for path, what in ((config.model_path, "architecture"), (config.weights_path, "weights")):
        if path is not None and not os.path.isfile(path):
            raise ModelLoadError(f"Cannot read the model {what} {path}: no such file.")
    if offline:
        return None
    if bool(config.certfile) != bool(config.keyfile):
        raise OSError("https needs both --certfile and --keyfile")
    for path in (config.certfile, config.keyfile):
        if path is not None and not os.path.isfile(path):
            raise OSError(f"cannot read {path}: no such file")
    if config.record is not None:
        from fer_server.capture.recording import check_record_folder

        check_record_folder(config.record, [name for name, _ in pairs])
    return bind(config.host, config.port)


def bind(host, port):
    """A listening TCP socket on ``host:port`` (IPv6 when ``host`` has a colon).

    Raises:
        OSError: with a sentence naming the address when it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def main(argv=None):
    """Run the command line; returns the exit code (2 for bad input, with one ``error:`` line)."""
    started = time.monotonic()
    args = parse_args(argv)
    config = config_from_args(args)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    if args.csv_dir:  # many videos: batch.py checks its own input before any work
        limit_malloc_arenas()
        return run_from_args(args, config)
    offline = bool(args.output or args.csv)
    try:
        if not offline:
            config = resolve_token(config)
        listener = preflight(config, offline)
    except (OSError, RuntimeError, ValueError) as e:  # SourceError and ModelLoadError are RuntimeErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    limit_malloc_arenas()  # before TensorFlow and the server start their threads
    if offline:
        return run_offline(args, config)
    try:
        return serve(config, listener, args.debug, started)
    finally:
        listener.close()


def serve(config, listener, debug, started):
    """Load the model, open the source and serve on ``listener`` until Ctrl-C; returns the exit code."""
    from fer_server.builders import build_cameras
    from fer_server.model.classifier import quiet_tensorflow
    from fer_server.web.app import create_app
    from fer_server.model.files import ModelLoadError
    from fer_server.web.server import serve as run_server
    from fer_server.capture.sources import SourceError

    try:
        with quiet_tensorflow():
            cameras = build_cameras(config)  # every source's camera, one shared classifier
    except (ModelLoadError, SourceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(config, cameras)
    app.debug = debug  # Flask's tracebacks in the log
    logging.info("serving %s on %s (ready %.1f s after start)",
                 ", ".join(f"{name}: {camera.name}" for name, camera in cameras), server_url(config),
                 time.monotonic() - started)
    try:
        run_server(app, cameras, config, listener, log_level="debug" if debug else "info")
    finally:
        cameras.close()  # stop the recorders, release the webcams and files
    return 0


def run_offline(args, config):
    """Offline mode: analyse --source into --output and/or --csv; returns the exit code."""
    from fer_server.offline.video import analyse_video, summary_text
    from fer_server.capture.camera_set import parse_source_specs
    from fer_server.config import source_specs
    from fer_server.builders import build_pipeline
    from fer_server.model.classifier import quiet_tensorflow
    from fer_server.model.files import ModelLoadError
    from fer_server.capture.sources import SourceError

    try:
        with quiet_tensorflow():
            pipeline = build_pipeline(config)
        source = parse_source_specs(source_specs(config))[0][1]
        summary = analyse_video(source, pipeline, args.output, args.csv)
    except (ModelLoadError, SourceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_text(summary, source))
    for path in (args.output, args.csv):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
