"""Every setting of the server in one place, with its default, its flag and its environment variable.

``Config`` holds the settings; ``add_config_arguments`` turns each field
into a command-line flag (``jpeg_quality`` -> ``--jpeg-quality``, with the
field's description from the docstring as help), whose default comes from
the environment variable ``FER_SERVER_<FIELD>`` (``FER_SERVER_JPEG_QUALITY``)
when it is set; ``config_from_args`` reads the parsed flags back into a
``Config``.  ``fer_server.cli`` (``main.py``) and the benchmarks share them.
"""
import argparse
import dataclasses
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path

#: The ``fer_server`` package folder.
PACKAGE = Path(__file__).resolve().parent
#: Where the shipped files are (``model.json``, ``model_weights.h5``, ``templates/``,
#: ``demo/demo.mp4``): the checkout's top level when running from it (``python main.py``,
#: ``pip install -e .``), else ``fer_server/data`` inside an installed wheel, where
#: ``setup.py`` copies them at build time.
ROOT = (PACKAGE.parent if (PACKAGE.parent / "model.json").is_file() and (PACKAGE.parent / "templates").is_dir()
        else PACKAGE / "data")
#: The classifier's inference paths (``model.classifier.Classifier``).
BACKENDS = ("tflite", "tflite-int8", "tf.function")


@dataclass(frozen=True)
class Config:
    """Server configuration; ``fer_server.cli`` fills it from the command line.

    Attributes:
        host: address the server listens on; on any address but loopback
            the server asks for an access token (see ``token``).
        port: TCP port the server listens on.
        token: the access token every route but /healthz asks for
            (``Authorization: Bearer``, or /?token= once in a browser, which
            then keeps it in a cookie); letters, digits and ``-._~`` only.
            Unset: none on loopback; on any other address one is made and
            printed at start-up.
        no_token: serve without an access token even on a non-loopback
            address (a warning is logged): only behind your own
            authentication.
        certfile: a PEM certificate (chain) to serve https with, with
            ``keyfile``.
        keyfile: the PEM private key of ``certfile``.
        source: webcam index (``"0"``), video file path, stream URL that
            OpenCV opens (``rtsp://``, ``http://``), or ``"demo"`` for the
            bundled clip; ``NAME=SOURCE`` names it (letters, digits, ``-``
            and ``_``; unnamed ones are cam0, cam1, ... in order).  Repeat
            the flag to serve several sources at once (a tuple of these
            strings; the env variable takes a comma-separated list); the
            first one is also served on the routes without a name.
        model_path: the model: a Keras JSON architecture (``model.json``,
            Keras 3 or Keras 2 / tf.keras 2.x), or a whole saved model
            (``.h5``, ``.hdf5``, ``.keras``) whose own weights are used; see
            ``model.files.load_model``.
        weights_path: the weights of a JSON architecture in the classic
            Keras HDF5 layout (``model_weights.h5``); ignored for a whole
            saved model.
        input_range: the pixel scaling the model expects: ``"0,1"``,
            ``"-1,1"`` or ``"0,255"``; unset: the ``input_range`` stored in
            ``model.json``, else ``"0,1"``.
        class_names: the model's class names in output order,
            comma-separated; unset: the ``class_names`` stored in
            ``model.json``, else the FER2013 names (for a 7-output model).
            A model whose output count differs is refused at start-up.
        demo_clip: the clip streamed for ``demo`` and when the webcam cannot
            be opened.
        loop: replay a video file from the start when it ends.
        idle_timeout_s: seconds after the last client leaves before the
            capture thread stops and releases the device.
        jpeg_quality: 0-100, for the MJPEG frames.
        scale_factor: Haar cascade ``detectMultiScale`` scale step between
            two search sizes (1.15: 15% larger each time).
        min_neighbors: Haar cascade ``detectMultiScale`` overlapping
            detections needed to keep a face.
        min_face_px: the smallest face side searched for, in pixels of the
            full frame.
        detect_width: frames wider than this many pixels are downscaled to
            it for face detection (0: full resolution).
        detect_every: frames over which one full-frame face search is
            spread, one band of its scale pyramid per frame (see
            ``vision.tracker``); known faces are followed on every frame and
            a new face is found within this many frames.
        still_threshold: a band of the spread face search is not run again
            while the frame's thumbnail (cells of half ``min_face_px``) differs from
            the one it last ran on by less than this many grey levels in
            every cell; 0 runs every band in its turn.
        cut_threshold: a frame whose thumbnail differs from the previous
            frame's by more than this many grey levels on average is a cut
            (a new scene): the last scene's faces are dropped and the whole
            search runs on that frame, so the new scene's faces are boxed
            at once; 0 never.
        spread_search: spread the full-frame search over ``detect_every``
            frames; off, the whole search runs on one frame in
            ``detect_every`` (and on every frame without a face), as before
            (for comparisons).
        smoothing: weight of the past in each tracked face's exponential
            moving average of probabilities; 0 turns smoothing off.
        classify_every: a tracked face is classified on one frame in this
            many, its last probabilities shown in between; 1 (the default)
            classifies every face on every frame; 2 or 3 lets a small
            machine serve more cameras (docs/benchmarks.md).  Live sources
            with ``classify_in_background`` pace their classification by
            what the cores leave instead, and ignore it.
        classify_in_background: live sources hand the faces they follow to
            one background thread that classifies every source's faces in
            turn, at a lower priority than the frames, and show each face's
            newest probabilities (a frame or more late when the cores are
            busy); a new face is still classified on its own frame.  Off:
            every face is classified on its frame before the frame is
            served (offline analysis always does so).
        search_threads: threads one face search may use in OpenCV
            (``cv2.setNumThreads``, for the whole server); 0: OpenCV's own
            (one per core) with one source, 1 with several, whose capture
            threads already search side by side and would otherwise
            oversubscribe the cores (docs/benchmarks.md: within the
            run-to-run noise at 8 sources on a 2-core machine).
        image_detect_width: like ``detect_width``, for uploaded images.
        image_min_face_px: like ``min_face_px``, for uploaded images (photos
            often hold smaller faces than a webcam frame).
        image_scale_factor: like ``scale_factor``, for uploaded images: a
            finer search, as one photo has no next frame to catch a miss.
        max_upload_bytes: larger request bodies get 413.
        max_image_pixels: images whose header declares more pixels get 413
            before any decoding.
        events_interval_s: least time between two ``/api/events`` messages.
        max_clients: concurrent stream viewers (``/video_feed`` and
            ``/api/events``) served; more get 503.
        request_timeout_s: a connection that has not sent a whole request
            within this many seconds of opening it is closed (slow or
            silent clients would otherwise hold a slot for good).
        health_max_frame_age_s: ``/healthz`` answers 503 when the source is
            meant to stream but no frame came for this many seconds.
        image_pad: for uploaded images only (``/api/predict``), a border of
            replicated edge pixels this fraction of the image's shorter side
            wide is added on every side before the face search, so a face
            that touches the border or fills the frame (a cropped face) is
            found; boxes are mapped back and clipped to the image.  0 turns
            it off.  Video frames are never padded.  Chosen on PublicTest
            through the upload path (``python -m train.detector_accuracy
            --pads``): on the bare faces, enlarged to 144 px, 0 finds 57.2%
            (accuracy 38.4%, a miss counting as wrong), 0.2 73.9% (51.3%),
            0.3 75.8% (52.3%), 0.4 and 0.5 no more; on the faces in a grey
            canvas (a whole photo) 0.3 finds 76.0% against 75.0% at 0, with
            accuracy 51.9% against 51.7%.  The search costs about
            ``(1 + 2 image_pad)^2`` times the pixels (1.6x the time of an
            unpadded 350x350 photo at 0.3).
        image_min_side_px: for uploaded images only: an image whose shorter
            side is below this many pixels is enlarged (bicubic) to it for
            the face search, its longer side to at most 4 times this
            (``FaceDetector.detect_padded``); the classifier still gets its
            crop from the image itself.  0 turns it off.  Chosen on
            PublicTest's 3,589 faces uploaded as they are, 48x48 (``python -m
            train.detector_accuracy --pads 0.3 --side 48 --image-min-side
            N``): 0 finds 66.0% (accuracy 48.5%, a miss counting as wrong),
            96 finds 75.0% (54.3%), 144 75.8% (54.6%), 192 75.6% (54.5%);
            wild-dev's 256-350 px photos are unchanged (JAFFE 213/213,
            muxspace 462/465).
        crop_margin: fraction of the Haar box side added on each side before
            cropping the face for the classifier.
        backend: the classifier's inference path: ``"tflite-int8"`` (int8
            weights, several times faster than float32 on CPUs with VNNI;
            docs/benchmarks.md), ``"tflite"`` (float32, the Keras model's
            outputs to within 1e-6) or ``"tf.function"``; see
            ``model.classifier.Classifier``.
        record: a folder to record every source's faces to, as CSV files
            ``<record>/<source name>/<UTC date and hour>.csv`` (one per hour,
            flushed every second; ``capture.recording.Recorder``); unset: no recording.
    """

    host: str = "127.0.0.1"
    port: int = 5000
    token: str = None
    no_token: bool = False
    certfile: Path = None
    keyfile: Path = None
    source: typing.Union[str, tuple] = "0"
    model_path: Path = ROOT / "model.json"
    weights_path: Path = ROOT / "model_weights.h5"
    demo_clip: Path = ROOT / "demo" / "demo.mp4"
    loop: bool = True
    idle_timeout_s: float = 5.0
    jpeg_quality: int = 80
    scale_factor: float = 1.15
    min_neighbors: int = 5
    min_face_px: int = 40
    detect_width: int = 320
    detect_every: int = 10
    still_threshold: float = 2.0
    cut_threshold: float = 10.0
    spread_search: bool = True
    smoothing: float = 0.6
    classify_every: int = 1
    classify_in_background: bool = True
    search_threads: int = 0
    crop_margin: float = 0.0
    image_detect_width: int = 1280
    image_min_face_px: int = 24
    image_scale_factor: float = 1.1
    image_pad: float = 0.3
    image_min_side_px: int = 144
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    events_interval_s: float = 0.2
    max_clients: int = 64
    request_timeout_s: float = 30.0
    health_max_frame_age_s: float = 10.0
    backend: str = "tflite-int8"
    input_range: str = None
    class_names: str = None
    record: Path = None


#: Prefix of the environment variables that set ``Config`` fields.
ENV_PREFIX = "FER_SERVER_"
#: Flags whose name is not the field's.
FLAG_NAMES = {"model_path": "--model", "weights_path": "--weights"}
#: Allowed values of some fields.
CHOICES = {"backend": BACKENDS}
#: Fields whose flag may be repeated (a tuple of strings; the env variable is comma-separated).
REPEATED = ("source",)


class _Repeated(argparse.Action):
    """``action="append"`` whose first use replaces the default instead of adding to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest)
        items = [] if items is self.default else list(items)
        setattr(namespace, self.dest, items + [values])


def source_specs(config):
    """``config.source`` as a list of strings, one per source (``"0"`` -> ``["0"]``)."""
    return [config.source] if isinstance(config.source, str) else list(config.source)


def join_input_range_argv(argv):
    """Command-line arguments with ``--input-range -1,1`` joined into ``--input-range=-1,1``.

    argparse takes a value starting with ``-`` (other than a plain negative
    number) for an option; run ``argv`` (a list of str) through this first.
    """
    argv = list(argv)
    for i in range(len(argv) - 1, 0, -1):
        if argv[i - 1] == "--input-range" and argv[i].startswith("-"):
            argv[i - 1:i + 1] = [f"--input-range={argv[i]}"]
    return argv


def field_help():
    """``{field name: description}`` from ``Config``'s docstring (its Attributes section).

    An entry ``a, b: text`` describes both fields; continuation lines are
    joined, and only the first sentence is kept (``first_sentence``).
    ``%`` is escaped for argparse.
    """
    doc = Config.__doc__.split("Attributes:", 1)[1]
    helps, names = {}, []
    for line in doc.splitlines():
        entry = re.match(r"^ {8}([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if entry:
            names = [n.strip() for n in entry.group(1).split(",")]
            for name in names:
                helps[name] = entry.group(2)
        elif line.strip() and names:
            for name in names:
                helps[name] += " " + line.strip()
    return {name: first_sentence(text).replace("``", "").replace("%", "%%") for name, text in helps.items()}


def first_sentence(text):
    """``text`` up to its first full stop followed by a capital letter: what ``--help`` shows.

    The rest of a field's description (how it was chosen, measured figures)
    stays in the docstring and the docs, not in the command-line help.
    """
    return re.split(r"(?<=[a-z0-9)`'\"]\.)\s+(?=[A-Z])", text.strip(), maxsplit=1)[0]


def _parse_bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _field_type(field):
    """The callable that turns a flag's text into the field's value."""
    hints = typing.get_type_hints(Config)
    kind = hints[field.name]
    if field.name in REPEATED:
        return str
    origin = typing.get_args(kind)
    if origin:  # Optional[X] and the like: the first non-None type
        kind = next(t for t in origin if t is not type(None))
    return {bool: _parse_bool, Path: Path}.get(kind, kind)


def add_config_arguments(parser, fields=None, environ=None, exclude=()):
    """Add one flag per ``Config`` field to an ``argparse`` parser.

    Args:
        parser: an ``argparse.ArgumentParser`` (or argument group).
        fields: names of the fields to add (default: all of them).
        exclude: names of fields not to add (the caller has its own flag).
        environ: the environment to read ``FER_SERVER_*`` defaults from
            (default: ``os.environ``).

    Booleans get ``--name`` / ``--no-name`` (a field named ``no_...``
    that defaults to False only ``--no-...``).  A flag's default is the
    environment variable's value when it is set, else the field's default.

    Raises:
        ValueError: an environment variable whose value does not parse,
            naming it.
    """
    environ = os.environ if environ is None else environ
    helps = field_help()
    for field in dataclasses.fields(Config):
        if (fields is not None and field.name not in fields) or field.name in exclude:
            continue
        convert = _field_type(field)
        default = field.default
        env_name = ENV_PREFIX + field.name.upper()
        if env_name in environ and field.name in REPEATED:
            items = tuple(v.strip() for v in environ[env_name].split(",") if v.strip())
            default = items[0] if len(items) == 1 else items
        elif env_name in environ:
            try:
                default = convert(environ[env_name])
            except ValueError as e:
                raise ValueError(f"environment variable {env_name}: {e}") from None
        flag = FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        text = f"{helps.get(field.name, '')} (default: %(default)s; env {env_name})"
        if field.name in REPEATED:
            parser.add_argument(flag, dest=field.name, action=_Repeated, default=default,
                                help=text + "; repeatable", metavar=field.name.upper())
        elif convert is _parse_bool and field.name.startswith("no_") and field.default is False:
            parser.add_argument(flag, dest=field.name, action="store_true", default=default, help=text)
        elif convert is _parse_bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=default, help=text)
        else:
            parser.add_argument(flag, dest=field.name, type=convert, default=default,
                                choices=CHOICES.get(field.name), help=text,
                                metavar=None if field.name in CHOICES else field.name.upper())


def config_from_args(args, **overrides):
    """The ``Config`` of parsed flags from ``add_config_arguments``; fields not on ``args`` keep their defaults."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    for name in REPEATED:  # one value stays a string, several become a tuple
        if isinstance(values.get(name), list):
            values[name] = values[name][0] if len(values[name]) == 1 else tuple(values[name])
    values.update(overrides)
    return Config(**values)
