"""The capture thread shared by every viewer.

One ``Camera`` owns the video source.  While at least one client is
watching, a single background thread reads frames, runs the
``FramePipeline`` on each, JPEG-encodes the result once and publishes it,
and every client sends the same bytes.  A client with a thread of its own
iterates ``Camera.frames()``; the event-loop server (``server.py``) holds a
``Viewer`` per client from ``Camera.connect()`` and is woken through
``Camera.add_listener``.  The thread releases the source
``idle_timeout_s`` seconds after the last client leaves and starts again
with the next one (the pattern of Miguel Grinberg's flask-video-streaming).
"""
import dataclasses
import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: The MJPEG boundary used in ``multipart/x-mixed-replace; boundary=frame``.
BOUNDARY = "frame"


class SourceError(RuntimeError):
    """A video source does not exist or cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One processed frame, as published to every client.

    Attributes:
        seq: publication number, increasing for the Camera's lifetime.
        jpeg: the annotated frame, JPEG-encoded.
        part: ``jpeg`` wrapped as one ``multipart/x-mixed-replace`` part.
        faces: the ``pipeline.Face`` list of this frame.
        width, height: frame size in pixels.
        timestamp: ``time.time()`` when it was published, seconds.
        timings: ms per stage for this frame: ``decode``, the pipeline's
            stages (``detect``, ``classify``, ``draw``), ``encode``, and
            ``total`` from the start of decoding to publication.
    """

    seq: int
    jpeg: bytes
    part: bytes
    faces: list
    width: int
    height: int
    timestamp: float
    timings: dict


def mjpeg_part(jpeg):
    """Wrap JPEG bytes as one part of an MJPEG ``multipart/x-mixed-replace`` stream."""
    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(jpeg)}\r\n\r\n").encode("ascii")
    return head + jpeg + b"\r\n"


def parse_source(source):
    """``"0"`` -> webcam index ``0``; any other string stays a path or URL."""
    text = str(source).strip()
    return int(text) if text.isdigit() else text


def is_url(source):
    return isinstance(source, str) and "://" in source


#: Open and read timeouts for stream URLs, so a dead camera cannot block the thread.
URL_TIMEOUT_MS = 5000


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
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"video file {path} does not exist")
    cap = open_capture(str(path))
    try:
        ok = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    if not ok:
        raise SourceError(f"video file {path} cannot be decoded by OpenCV")


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


class _Wakeup:
    """A one-shot signal for the clients waiting on the next frame.

    ``threading.Condition.notify_all`` wakes every waiting client at once,
    and 50 threads then fight over the condition's lock and the GIL (about
    20 futex calls per client per frame, measured with ``strace -c``).  Here
    the first waiter gets the lock when it is fired and passes it on, so
    the clients wake one after another.
    """

    __slots__ = ("_lock",)

    def __init__(self):
        self._lock = threading.Lock()
        self._lock.acquire()

    def fire(self):
        """Wake the waiters; call once."""
        self._lock.release()

    def wait(self, timeout_s):
        """True once fired, False after ``timeout_s`` seconds."""
        if self._lock.acquire(timeout=timeout_s):
            self._lock.release()
            return True
        return False


class Viewer:
    """One client's registration with a ``Camera``, from ``Camera.connect()``.

    While open it counts in ``Camera.clients`` and keeps the capture thread
    running.  It remembers the last frame it handed out, so ``poll`` gives
    each frame at most once.  One client uses it from one thread (or event
    loop) at a time; ``close`` it when the client goes.
    """

    def __init__(self, camera, run):
        self._camera = camera
        self._run = run
        self._last = -1  # seq of the last frame handed out
        self._open = True

    def run_over(self):
        """True when the capture run this viewer joined has ended or the camera was closed."""
        return self._camera._ended_run == self._run or self._camera._closed.is_set()

    def poll(self, repeat=False):
        """The newest frame, if this viewer has not had it yet; never blocks.

        Args:
            repeat: hand out the newest frame even if it was had already
                (a keepalive while the source is reconnecting).

        Returns:
            ``(frame, ended)``: a ``Frame`` or None, and True once the
            stream is over for this viewer: the camera was closed, or its
            run ended and every frame of that run was handed out.
        """
        camera = self._camera
        frame = camera._frame
        if camera._closed.is_set() or (
                camera._ended_run == self._run and (frame is None or frame.seq <= self._last)):
            return None, True
        if frame is None or (frame.seq <= self._last and not repeat):
            return None, False
        self._last = frame.seq
        return frame, False

    def close(self):
        """Unregister from the camera; idempotent."""
        if self._open:
            self._open = False
            self._camera._disconnect()


class Camera:
    """A video source processed by one background thread and shared by all clients.

    Args:
        source: webcam index (int), video file path or stream URL.
        pipeline: object with ``process(frame) -> (annotated, faces)`` and
            optionally ``reset()`` (called when the video starts over),
            usually a ``pipeline.FramePipeline``.
        loop: replay a video file when it ends; otherwise the stream ends.
        idle_timeout_s: seconds without clients before the thread stops.
        jpeg_quality: 0-100.
        notice: a sentence shown on the page (e.g. the webcam fallback).
        open_capture: ``open_video`` (the default) or a stand-in with the
            ``cv2.VideoCapture`` interface (tests count and fail calls).
        pace: play a video file at its own frame rate (``CAP_PROP_FPS``);
            False processes it as fast as the CPU allows (benchmarks).
            Webcams and streams deliver at their own rate either way.
        on_frame: called in the capture thread with each published ``Frame``.
        max_backoff_s: longest wait between two attempts to reopen a lost
            webcam or stream; the wait starts at 0.25 s and doubles.

    A frame the pipeline fails on is skipped (and logged); a live source
    that stops delivering is reopened with backoff while clients watch.
    """

    MAX_FAILED_READS = 5  # failed reads in a row before a live source counts as lost
    MAX_FAILED_FRAMES = 25  # frames in a row the pipeline fails on before the run stops

    def __init__(self, source, pipeline, *, loop=True, idle_timeout_s=5.0, jpeg_quality=80,
                 notice=None, open_capture=None, pace=True, on_frame=None, max_backoff_s=2.0):
        self.source = source
        self.pipeline = pipeline
        self.loop = loop
        self.idle_timeout_s = idle_timeout_s
        self.jpeg_quality = jpeg_quality
        self.notice = notice
        self.open_capture = open_capture or open_video
        self.pace = pace
        self.on_frame = on_frame
        self.max_backoff_s = max_backoff_s
        self.is_file = not isinstance(source, int) and not is_url(source)
        self._cond = threading.Condition()
        self._wakeup = _Wakeup()  # fired, and replaced, at each frame and at the end of a run
        self._listeners = []  # called along with each wakeup
        self._device = threading.Lock()  # held from open to release of the capture
        self._thread = None
        self._clients = 0
        self._idle_since = time.monotonic()
        self._frame = None
        self._seq = 0
        self._run_id = 0  # bumped at each thread start
        self._ended_run = None  # the last run whose thread has retired
        self._closed = threading.Event()
        #: ``idle`` (no thread), ``streaming``, ``reconnecting`` (a live source was
        #: lost or cannot be opened; retried with backoff), ``ended`` (a video file
        #: played to its end) or ``error``.
        self.state = "idle"
        #: A sentence for the page when the source failed, else None.
        self.error = None
        #: Frames read from the source and processed since start-up.
        self.frames_processed = 0
        self._last_frame_at = None  # time.monotonic() of the last real frame or of the start

    def seconds_since_frame(self):
        """Seconds since the last frame from the source (or since the thread started); None when idle."""
        with self._cond:
            if self._thread is None or self._last_frame_at is None:
                return None
            return time.monotonic() - self._last_frame_at

    @property
    def name(self):
        """A human-readable name of the source."""
        if isinstance(self.source, int):
            return f"webcam {self.source}"
        return self.source if is_url(self.source) else Path(self.source).name

    @property
    def clients(self):
        return self._clients

    @property
    def running(self):
        with self._cond:
            return self._thread is not None

    def latest(self):
        """The most recent ``Frame``, or None before the first one."""
        return self._frame

    def connect(self):
        """Register a client, starting the capture thread if needed.

        Returns:
            A ``Viewer`` to poll for frames and to close when the client
            goes, or None when the camera is closed.
        """
        with self._cond:
            self._clients += 1
            self._start_locked()
            if self._thread is None:  # closed
                self._clients -= 1
                return None
            return Viewer(self, self._run_id)

    def add_listener(self, listener):
        """Call ``listener()`` each time a frame is published or a run ends.

        It runs in the publishing thread with the camera's lock held, so it
        must return at once, as ``loop.call_soon_threadsafe`` does; the
        event-loop server (``server.py``) wakes its viewers this way.
        """
        with self._cond:
            self._listeners.append(listener)

    def remove_listener(self, listener):
        """Stop calling a listener given to ``add_listener``; no error if it is not there."""
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def frames(self, keepalive_s=2.0):
        """Yield each new ``Frame`` to one client, starting the thread if needed.

        A blocking generator for a client with a thread of its own (a WSGI
        worker).  It registers a client while it is alive; closing it (a
        disconnected HTTP client) unregisters at once.  It ends when the
        source ends (a video file with ``loop=False``), fails for good, or the
        camera is closed.  While a live source is reconnecting, the latest
        frame is repeated every ``keepalive_s`` seconds, so a viewer keeps
        its picture and a vanished client is noticed at the next write.
        """
        viewer = self.connect()
        if viewer is None:
            return
        wakeup = None  # the first pass does not wait: a frame already there is sent at once
        try:
            while True:
                fresh = wakeup is None or viewer.run_over() or wakeup.wait(keepalive_s)
                wakeup = self._wakeup  # read before the frame, so no frame is missed
                frame, ended = viewer.poll(repeat=not fresh)
                if ended:
                    return
                if frame is not None:
                    yield frame
        finally:
            viewer.close()

    def _disconnect(self):
        with self._cond:
            self._clients -= 1
            if self._clients == 0:
                self._idle_since = time.monotonic()

    def close(self, timeout_s=5.0):
        """Stop the capture thread now, release the source and end every client's stream."""
        self._closed.set()
        with self._cond:
            thread = self._thread
            self._cond.notify_all()
            self._wake_clients_locked()
        if thread is not None:
            thread.join(timeout_s)

    def _start_locked(self):
        if self._thread is None and not self._closed.is_set():
            self._run_id += 1
            self._frame = None
            self._last_frame_at = time.monotonic()
            self._thread = threading.Thread(target=self._run, args=(self._run_id,),
                                            name=f"camera-{self.name}", daemon=True)
            self._thread.start()

    def _stop_if_idle(self, run):
        """True, and the thread retired, when closed or without clients for ``idle_timeout_s``.

        Retiring under the same lock as the check means a client arriving
        just after sees no thread and starts a new one, instead of waiting
        on a thread that is about to exit.
        """
        with self._cond:
            idle = self._closed.is_set() or (
                self._clients == 0 and time.monotonic() - self._idle_since > self.idle_timeout_s)
            if idle:
                self._retire_locked(run, "idle")
            return idle

    def _retire_locked(self, run, state):
        if self._run_id == run and self._thread is not None:
            self._thread = None
            self._ended_run = run
            self.state = state
            self._wake_clients_locked()

    def _wake_clients_locked(self):
        wakeup, self._wakeup = self._wakeup, _Wakeup()
        wakeup.fire()
        for listener in self._listeners:
            listener()

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

    def _run(self, run):
        state = "error"
        with self._device:
            try:
                state = self._stream(run)
            except Exception:  # keep serving: the next client starts a new thread
                log.exception("capture thread for %s failed", self.name)
                self.error = f"processing {self.name} failed"
            finally:
                with self._cond:
                    self._retire_locked(run, state)

    def _stream(self, run):
        """Open, capture, and reopen a lost live source with backoff; returns the final state."""
        backoff = 0.25
        while True:
            if self._stop_if_idle(run):
                return "idle"
            cap = self._open()
            if cap is None and self.is_file:
                self.error = f"cannot open {self.name}"
                return "error"
            if cap is None:
                self.state, self.error = "reconnecting", f"cannot open {self.name}; retrying"
                self._publish_placeholder(f"{self.name}: reconnecting...")
                with self._cond:
                    self._cond.wait_for(self._closed.is_set, backoff)
                backoff = min(2 * backoff, self.max_backoff_s)
                continue
            self.state, self.error, backoff = "streaming", None, 0.25
            try:
                outcome = self._capture_loop(cap, run)
                if outcome != "lost":
                    with self._cond:  # before the release: a new client starts a new thread
                        self._retire_locked(run, outcome)
                    return outcome
            finally:
                cap.release()
            self.state = "reconnecting"
            log.warning("%s stopped delivering frames; reconnecting", self.name)

    def _capture_loop(self, cap, run):
        """Read and process frames; returns ``idle``, ``ended`` (a file's end) or ``lost``."""
        fps = cap.get(cv2.CAP_PROP_FPS) if self.is_file and self.pace else 0.0
        interval = 1.0 / fps if 1.0 <= fps <= 240.0 else (1 / 25 if self.is_file and self.pace else 0.0)
        due = time.monotonic()
        empty_reads = failures = 0
        self._reset_pipeline()
        while True:
            if self._stop_if_idle(run):
                return "idle"
            started = time.perf_counter()
            ok, frame = cap.read()
            decoded = time.perf_counter()
            if not ok or frame is None:
                empty_reads += 1
                if not self.is_file:
                    if empty_reads >= self.MAX_FAILED_READS:
                        return "lost"
                    time.sleep(0.05)
                    continue
                if self.loop and empty_reads < 2:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    self._reset_pipeline()
                    continue
                return "ended"
            empty_reads = 0
            try:
                annotated, faces = self.pipeline.process(frame)
                failures = 0
            except Exception:
                failures += 1
                log.exception("processing a frame of %s failed (%d in a row)", self.name, failures)
                if failures >= self.MAX_FAILED_FRAMES:
                    raise
                continue
            processed = time.perf_counter()
            ok, jpeg = cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if ok:
                jpeg = jpeg.tobytes()
                done = time.perf_counter()
                timings = {"decode": (decoded - started) * 1e3,
                           **getattr(self.pipeline, "timings", {}),
                           "encode": (done - processed) * 1e3, "total": (done - started) * 1e3}
                self.frames_processed += 1
                self._last_frame_at = time.monotonic()
                self._publish(jpeg, faces, frame.shape[1], frame.shape[0], timings)
            if interval:
                due += interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -interval:
                    due = time.monotonic()  # fell behind: do not try to catch up

    def _publish_placeholder(self, text):
        """Publish a grey frame saying ``text``, the size of the last real frame."""
        last = self._frame
        width, height = (last.width, last.height) if last else (640, 360)
        image = np.full((height, width, 3), 60, np.uint8)
        cv2.putText(image, text, (20, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (230, 230, 230), 2,
                    cv2.LINE_AA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        self._publish(jpeg.tobytes(), [], width, height, {})

    def _reset_pipeline(self):
        reset = getattr(self.pipeline, "reset", None)
        if reset:
            reset()

    def _publish(self, jpeg, faces, width, height, timings):
        frame = Frame(0, jpeg, mjpeg_part(jpeg), faces, width, height, time.time(), timings)
        with self._cond:
            self._seq += 1
            self._frame = frame = dataclasses.replace(frame, seq=self._seq)
            self._wake_clients_locked()
        if self.on_frame:
            self.on_frame(frame)
