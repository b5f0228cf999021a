"""Video sources: what to open, opening it, reading it at its pace, reopening it when lost.

``resolve_source`` turns the ``--source`` setting into something OpenCV
opens (falling back to the demo clip without a webcam); ``VideoSource``
reads it frame by frame for the capture thread of ``capture.camera.Camera``.
Nothing here processes or publishes a frame.
"""
import logging
import time
from pathlib import Path
from typing import NamedTuple

import cv2

log = logging.getLogger(__name__)

#: Open and read timeouts for stream URLs, so a dead camera cannot block the thread.
URL_TIMEOUT_MS = 5000


class SourceError(RuntimeError):
    """A video source does not exist or cannot be decoded."""


def parse_source(source):
    """``"0"`` -> webcam index ``0``; any other string stays a path or URL."""
    text = str(source).strip()
    return int(text) if text.isdigit() else text


def is_url(source):
    """True for a stream URL (``rtsp://``, ``http://``, ...)."""
    return isinstance(source, str) and "://" in source


def source_name(source):
    """A human-readable name: ``webcam 0``, the URL, or a file's name."""
    if isinstance(source, int):
        return f"webcam {source}"
    return source if is_url(source) else Path(source).name


def open_video(source):
    """``cv2.VideoCapture`` of a webcam index, file or URL (URLs with 5 s open/read timeouts)."""
    if is_url(source):
        return cv2.VideoCapture(source, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, URL_TIMEOUT_MS,
                                                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, URL_TIMEOUT_MS])
    return cv2.VideoCapture(source)


def check_video_file(path, open_capture=cv2.VideoCapture):
    """Make sure ``path`` is a video OpenCV can decode a first frame from.

    Raises:
        SourceError: naming the file, if it is missing or undecodable.
    """
    check_file_exists(path)
    cap = open_capture(str(path))
    try:
        ok = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    if not ok:
        raise SourceError(f"video file {path} cannot be decoded by OpenCV")


def file_fps(cap, default=25.0):
    """A video file's frame rate from its container (``cv2.CAP_PROP_FPS``), or ``default`` when it
    declares none or an implausible one (outside 1-240 fps)."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if 1.0 <= fps <= 240.0 else default


def check_file_exists(path):
    """The cheap half of ``check_video_file``: no OpenCV, no decoding.

    Raises:
        SourceError: naming the file, if it is not a file.
    """
    if not Path(path).is_file():
        raise SourceError(f"video file {path} does not exist")


def resolve_source(source, demo_clip, open_capture=cv2.VideoCapture):
    """Decide what to stream, falling back to the demo clip without a webcam.

    Args:
        source: webcam index, path, URL or ``"demo"`` (see ``config.Config``).
        demo_clip: path of the bundled clip.
        open_capture: ``cv2.VideoCapture`` or a stand-in with its interface.

    Returns:
        ``(source, notice)``: an int webcam index or a path/URL string, and a
        sentence for the page when the request could not be honoured
        (``None`` otherwise).

    Raises:
        SourceError: a file source that is missing or cannot be decoded.
    """
    source = parse_source(source)
    if source == "demo":
        check_video_file(demo_clip, open_capture)
        return str(demo_clip), None
    if isinstance(source, int):
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # we say it once below
        try:
            cap = open_capture(source)
            ok = cap.isOpened()
            cap.release()
        finally:
            cv2.utils.logging.setLogLevel(previous)
        if ok:
            return source, None
        notice = f"No webcam could be opened at index {source}; streaming the demo clip instead."
        log.warning(notice)
        check_video_file(demo_clip, open_capture)
        return str(demo_clip), notice
    if not is_url(source):
        check_video_file(source, open_capture)
    return source, None


class Reconnecting(NamedTuple):
    """Yielded by ``VideoSource.frames`` when a live source cannot be (re)opened.

    Attributes:
        message: a sentence for the page and ``/healthz``.
    """

    message: str


#: Yielded by ``VideoSource.frames`` when a source opens and frames follow.
OPENED = "opened"
#: Yielded when a looped video file starts over (tracks and smoothing should reset).
REWOUND = "rewound"
#: Yielded when a live source stopped delivering frames, before it is reopened.
LOST = "lost"
#: Yielded when a video file has played to its end, before its capture is released.
ENDED = "ended"


class VideoSource:
    """Reads one source frame by frame, at its own pace, and reopens it when it is lost.

    Args:
        source: webcam index (int), video file path or stream URL.
        loop: replay a video file when it ends; otherwise it ends.
        pace: play a video file at its own frame rate (``CAP_PROP_FPS``, 25
            fps when the file does not say); False reads it as fast as the
            CPU allows (benchmarks).  Webcams and streams deliver at their
            own rate either way.
        open_capture: ``open_video`` (the default) or a stand-in with the
            ``cv2.VideoCapture`` interface (tests count and fail calls).
        max_backoff_s: longest wait between two attempts to reopen a lost
            webcam or stream; the wait starts at 0.25 s and doubles.

    A live source (webcam or URL) that cannot be opened, or fails
    ``MAX_FAILED_READS`` reads in a row, is reopened with backoff for as
    long as the reader wants frames; a video file that cannot be opened
    raises ``SourceError``.
    """

    MAX_FAILED_READS = 5  # failed reads in a row before a live source counts as lost

    def __init__(self, source, *, loop=True, pace=True, open_capture=None, max_backoff_s=2.0):
        self.source = source
        self.loop = loop
        self.pace = pace
        self.open_capture = open_capture or open_video
        self.max_backoff_s = max_backoff_s
        self.is_file = not isinstance(source, int) and not is_url(source)
        self.name = source_name(source)
        #: ms spent in ``cap.read()`` for the last frame yielded.
        self.decode_ms = 0.0

    def frames(self, stop, wait):
        """Yield the source's frames until ``stop()`` is true or a video file ends.

        Args:
            stop: ``() -> bool``, asked before each open and each read; True
                ends the iteration (the capture is released).
            wait: ``(seconds) -> None``, used for the backoff between two
                attempts to open a live source; it may return early (a
                closing camera), after which ``stop()`` is asked.

        Yields:
            ``(H, W, 3)`` uint8 BGR frames, with ``decode_ms`` set for each,
            and the markers ``OPENED`` (after each successful open),
            ``REWOUND`` (a looped file starts over), ``LOST`` (a live source
            stopped delivering; it is reopened next), ``ENDED`` (a file's end,
            the capture still held; the iteration stops after it) and
            ``Reconnecting`` (a live source is being reopened; ``wait``
            follows).

        Raises:
            SourceError: a video file cannot be opened.
        """
        backoff = 0.25
        while not stop():
            cap = self._open()
            if cap is None:
                if self.is_file:
                    raise SourceError(f"cannot open {self.name}")
                yield Reconnecting(f"cannot open {self.name}; retrying")
                wait(backoff)
                backoff = min(2 * backoff, self.max_backoff_s)
                continue
            backoff = 0.25
            try:
                yield OPENED
                ended = yield from self._read(cap, stop)
            finally:
                cap.release()
            if ended:
                return
            log.warning("%s stopped delivering frames; reconnecting", self.name)
            yield LOST

    def _open(self):
        try:
            cap = self.open_capture(self.source)
        except Exception as e:  # a backend error is a source that cannot be opened
            log.warning("opening %s failed: %s", self.name, e)
            return None
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _read(self, cap, stop):
        """Frames of one open capture; returns True when done (stopped or a file's end), False when lost."""
        fps = cap.get(cv2.CAP_PROP_FPS) if self.is_file and self.pace else 0.0
        interval = 1.0 / fps if 1.0 <= fps <= 240.0 else (1 / 25 if self.is_file and self.pace else 0.0)
        due = time.monotonic()
        empty_reads = 0
        while not stop():
            started = time.perf_counter()
            ok, frame = cap.read()
            if not ok or frame is None:
                empty_reads += 1
                if not self.is_file:
                    if empty_reads >= self.MAX_FAILED_READS:
                        return False
                    time.sleep(0.05)
                    continue
                if self.loop and empty_reads < 2:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    yield REWOUND
                    continue
                yield ENDED
                return True
            empty_reads = 0
            self.decode_ms = (time.perf_counter() - started) * 1e3
            yield frame
            if interval:
                due += interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -interval:
                    due = time.monotonic()  # fell behind: do not try to catch up
        return True
