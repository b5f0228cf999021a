"""The capture thread shared by every viewer: ``Camera``, its ``Viewer``s and ``Frame``s.

One ``Camera`` owns a ``capture.sources.VideoSource``.  While at least one client
is watching, a single background thread reads its frames, runs the
``FramePipeline`` on each, JPEG-encodes the result once and publishes it,
and every client sends the same bytes.  A client with a thread of its own
iterates ``Camera.frames()``; the event-loop server (``web.server.py``) holds a
``Viewer`` per client from ``Camera.connect()`` and is woken through
``Camera.add_listener``.  The thread releases the source
``idle_timeout_s`` seconds after the last client leaves and starts again
with the next one (the pattern of Miguel Grinberg's flask-video-streaming).
"""
import dataclasses
import logging
import threading
import time

import cv2
import numpy as np

from fer_server.capture.mjpeg import mjpeg_part
from fer_server.capture.sources import ENDED, LOST, OPENED, REWOUND, Reconnecting, SourceError, VideoSource

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Frame:
    """One processed frame, as published to every client.

    Attributes:
        seq: publication number, increasing for the Camera's lifetime.
        jpeg: the annotated frame, JPEG-encoded; None for a frame analysed
            while no viewer was connected (neither drawn nor encoded).
        part: ``jpeg`` wrapped as one ``multipart/x-mixed-replace`` part (None with it).
        faces: the ``vision.frames.Face`` list of this frame.
        width, height: frame size in pixels.
        timings: ms per stage for this frame: ``decode``, the pipeline's
            stages (``detect``, ``classify``, ``draw``), ``encode``, and
            ``total`` from the start of decoding to publication (empty for
            a placeholder).
        placeholder: a grey frame published while the source reconnects,
            not a frame from the source.
        label_lag: frames between this frame and the oldest crop behind a
            label it shows (0: every face classified on this frame; see
            ``vision.background``).
    """

    seq: int
    jpeg: bytes
    part: bytes
    faces: list
    width: int
    height: int
    timings: dict
    placeholder: bool = False
    label_lag: int = 0


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
        return self._camera.newest(self._run)[1]

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
        frame, over = self._camera.newest(self._run)
        if frame is not None and frame.jpeg is None:  # analysed while nobody watched: not drawn
            frame = None
        if over and (frame is None or frame.seq <= self._last or self._camera.closed):
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
            usually a ``vision.pipeline.FramePipeline``.
        loop: replay a video file when it ends; otherwise the stream ends.
        idle_timeout_s: seconds without clients before the thread stops.
        jpeg_quality: 0-100.
        notice: a sentence shown on the page (e.g. the webcam fallback).
        open_capture: ``capture.sources.open_video`` (the default) or a stand-in
            with the ``cv2.VideoCapture`` interface (tests count and fail calls).
        pace: play a video file at its own frame rate; False processes it
            as fast as the CPU allows (benchmarks).  See ``capture.sources.VideoSource``.
        on_frame: called in the capture thread with each published
            ``Frame`` (more with ``add_frame_observer``).
        max_backoff_s: longest wait between two attempts to reopen a lost
            webcam or stream; the wait starts at 0.25 s and doubles.

    A frame the pipeline fails on is skipped (and logged); a live source
    that stops delivering is reopened with backoff while clients watch.
    """

    MAX_FAILED_FRAMES = 25  # frames in a row the pipeline fails on before the run stops

    def __init__(self, source, pipeline, *, loop=True, idle_timeout_s=5.0, jpeg_quality=80,
                 notice=None, open_capture=None, pace=True, on_frame=None, max_backoff_s=2.0):
        self.video = VideoSource(source, loop=loop, pace=pace, open_capture=open_capture,
                                 max_backoff_s=max_backoff_s)
        self.source = source
        self.pipeline = pipeline
        self.idle_timeout_s = idle_timeout_s
        self.jpeg_quality = jpeg_quality
        self.notice = notice
        self._observers = [on_frame] if on_frame else []
        self._cond = threading.Condition()
        self._wakeup = _Wakeup()  # fired, and replaced, at each frame and at the end of a run
        self._listeners = []  # called along with each wakeup
        self._device = threading.Lock()  # held from open to release of the capture
        self._thread = None
        self._clients = 0
        self._always_on = False  # keep_running: capture with no viewer (recorded sources)
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

    @property
    def name(self):
        """A human-readable name of the source (``capture.sources.source_name``)."""
        return self.video.name

    @property
    def clients(self):
        """Viewers connected now (``connect`` minus ``Viewer.close``)."""
        return self._clients

    @property
    def running(self):
        """True while the capture thread runs."""
        with self._cond:
            return self._thread is not None

    @property
    def closed(self):
        """True once ``close`` was called."""
        return self._closed.is_set()

    def seconds_since_frame(self):
        """Seconds since the last frame from the source (or since the thread started); None when idle."""
        with self._cond:
            if self._thread is None or self._last_frame_at is None:
                return None
            return time.monotonic() - self._last_frame_at

    def latest(self):
        """The most recent ``Frame``, or None before the first one."""
        return self._frame

    def newest(self, run):
        """``(latest frame or None, over)``; ``over``: capture run ``run`` has ended or the camera closed."""
        return self._frame, self._ended_run == run or self._closed.is_set()

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

    def keep_running(self):
        """Capture and analyse from now on, viewers or not (the idle release no longer applies).

        For a recorded source (``--record``): every frame reaches the frame
        observers at the source's own rate whether or not a page is open.  A
        video file that ends (``loop=False``) or a source that fails ends the
        run as for viewers; a lost webcam or stream is reopened with backoff.
        """
        with self._cond:
            self._always_on = True
            self._start_locked()

    def add_listener(self, listener):
        """Call ``listener()`` each time a frame is published or a run ends.

        It runs in the publishing thread with the camera's lock held, so it
        must return at once, as ``loop.call_soon_threadsafe`` does; the
        event-loop server (``web.server.py``) wakes its viewers this way.
        """
        with self._cond:
            self._listeners.append(listener)

    def add_frame_observer(self, observer):
        """Call ``observer(frame)`` in the capture thread with each published ``Frame`` (metrics)."""
        self._observers.append(observer)

    def remove_listener(self, listener):
        """Stop calling a listener given to ``add_listener``; no error if it is not there."""
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def frames(self, keepalive_s=2.0):
        """Yield each new ``Frame`` to one client, starting the thread if needed.

        A blocking generator for a client with a thread of its own (tests,
        benchmarks).  It registers a client while it is alive; closing it
        unregisters at once.  It ends when the source ends (a video file
        with ``loop=False``), fails for good, or the camera is closed.
        While a live source is reconnecting, the latest frame is repeated
        every ``keepalive_s`` seconds.
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
                not self._always_on and self._clients == 0
                and time.monotonic() - self._idle_since > self.idle_timeout_s)
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

    def _wait_unless_closed(self, seconds):
        with self._cond:
            self._cond.wait_for(self._closed.is_set, seconds)

    def _run(self, run):
        state = "error"
        with self._device:
            try:
                state = self._stream(run)
            except SourceError as e:
                self.error = str(e)
            except Exception:  # keep serving: the next client starts a new thread
                log.exception("capture thread for %s failed", self.name)
                self.error = f"processing {self.name} failed"
            finally:
                with self._cond:
                    self._retire_locked(run, state)

    def _stream(self, run):
        """Process the source's frames until idle or its end; returns the final state."""
        failures = 0
        for item in self.video.frames(lambda: self._stop_if_idle(run), self._wait_unless_closed):
            if isinstance(item, Reconnecting):
                self.state, self.error = "reconnecting", item.message
                self._publish_placeholder(f"{self.name}: reconnecting...")
            elif item is OPENED:
                self.state, self.error = "streaming", None
                self._reset_pipeline()
            elif item is LOST:
                self.state = "reconnecting"
            elif item is REWOUND:
                self._reset_pipeline()
            elif item is ENDED:
                with self._cond:  # before the release: a new client starts a new thread
                    self._retire_locked(run, "ended")
                return "ended"
            else:
                failures = self._process(item, failures)
        return "idle"

    def _process(self, frame, failures):
        """Run the pipeline on one frame and publish it; returns the failures in a row."""
        started = time.perf_counter()
        # Nobody watching (a recorded source with no viewer): the faces, without drawing or JPEG.
        watched = self._clients > 0 or not hasattr(self.pipeline, "find_faces")
        try:
            if watched:
                annotated, faces = self.pipeline.process(frame)
            else:
                annotated, faces = None, self.pipeline.find_faces(frame)
        except Exception:
            failures += 1
            log.exception("processing a frame of %s failed (%d in a row)", self.name, failures)
            if failures >= self.MAX_FAILED_FRAMES:
                raise
            return failures
        processed = time.perf_counter()
        ok, jpeg = True, None
        if watched:
            ok, jpeg = cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if ok:
            done = time.perf_counter()
            decode_ms = self.video.decode_ms
            timings = {"decode": decode_ms, **getattr(self.pipeline, "timings", {}),
                       "total": decode_ms + (done - started) * 1e3}
            if watched:
                timings["encode"] = (done - processed) * 1e3
            self.frames_processed += 1
            self._last_frame_at = time.monotonic()
            self._publish(None if jpeg is None else jpeg.tobytes(), faces, frame.shape[1], frame.shape[0], timings,
                          label_lag=getattr(self.pipeline, "label_lag", 0))
        return 0

    def _publish_placeholder(self, text):
        """Publish a grey frame saying ``text``, the size of the last real frame."""
        last = self._frame
        width, height = (last.width, last.height) if last else (640, 360)
        image = np.full((height, width, 3), 60, np.uint8)
        cv2.putText(image, text, (20, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (230, 230, 230), 2,
                    cv2.LINE_AA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        self._publish(jpeg.tobytes(), [], width, height, {}, placeholder=True)

    def _reset_pipeline(self):
        reset = getattr(self.pipeline, "reset", None)
        if reset:
            reset()

    def _publish(self, jpeg, faces, width, height, timings, placeholder=False, label_lag=0):
        part = None if jpeg is None else mjpeg_part(jpeg, "placeholder" if placeholder else "frame")
        with self._cond:
            self._seq += 1
            self._frame = frame = Frame(self._seq, jpeg, part, faces, width, height, timings, placeholder,
                                        label_lag)
            self._wake_clients_locked()
        for observer in self._observers:
            observer(frame)
