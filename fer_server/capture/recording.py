"""Live recording of each source's faces to CSV (``--record DIR``), and its recent rows for ``/api/history``.

A ``Recorder`` is a frame observer of one ``capture.camera.Camera``
(``Camera.add_frame_observer``): in the capture thread it only turns each
frame's faces into rows and appends them to a list.  A thread of its own
writes them every ``flush_s`` seconds to ``DIR/<source name>/<UTC
date>T<hour>.csv`` (a new file each hour) and flushes the file, so a crash
or Ctrl-C loses at most the last second.  A write that fails (a full disk,
a folder removed) is logged and its rows dropped; the stream goes on and
the next flush tries again (the error is logged at most once a minute).
"""
import collections
import csv
import datetime
import logging
import threading
import time
from pathlib import Path

from fer_server.face_csv import csv_header, ensure_writable_folder, face_row

log = logging.getLogger(__name__)

#: Seconds of rows kept in memory for ``/api/history``.
HISTORY_S = 600.0
#: The first column, before ``offline.video.CSV_COLUMNS``: the frame's wall-clock time, ISO 8601 in UTC.
TIME_COLUMN = "wall_time"


def check_record_folder(folder, names):
    """Make ``folder/<name>`` for each source name and check a file can be written there.

    Raises:
        OSError: with one sentence naming the folder that cannot be written.
    """
    for name in names:
        path = Path(folder) / name
        try:
            ensure_writable_folder(path)
        except OSError as e:
            raise OSError(f"cannot write recordings to {path}: {e.strerror or e}") from None


def hour_file(folder, wall_time):
    """The CSV file of the hour of ``wall_time`` (seconds since the epoch): ``folder/YYYY-MM-DDTHH.csv`` (UTC)."""
    return Path(folder) / (datetime.datetime.fromtimestamp(wall_time, datetime.timezone.utc)
                           .strftime("%Y-%m-%dT%H") + ".csv")


class Recorder:
    """Records one source's faces, one row per face per frame.

    Args:
        folder: the ``--record`` folder; rows go to ``folder/<name>/``.
        name: the source's name.
        labels: the classifier's class names (probability columns); None
            for a camera without a classifier (rows then have none).
        flush_s: seconds between two writes (and flushes) of the file.
        history_s: seconds of rows kept for ``recent``.
        clock: wall-clock time in seconds since the epoch (tests move it).
        monotonic: the clock of ``time_s`` and of ``recent`` (tests move it).

    Attributes:
        columns: ``wall_time`` then ``offline.video.csv_header(labels)``:
            ``frame`` is the ``capture.camera.Frame.seq`` viewers saw, ``time_s``
            seconds since the recorder started.
        rows_written: rows written to files so far.
        write_errors: failed writes so far.
    """

    def __init__(self, folder, name, labels, flush_s=1.0, history_s=HISTORY_S, clock=time.time,
                 monotonic=time.monotonic):
        self.folder = Path(folder) / name
        self.name = name
        self.labels = tuple(labels or ())
        self.columns = (TIME_COLUMN,) + csv_header(self.labels)
        self.flush_s = flush_s
        self.history_s = history_s
        self.clock = clock
        self.monotonic = monotonic
        self.rows_written = 0
        self.write_errors = 0
        #: The last failed write's reason (one sentence), None after a write succeeds.
        self.last_error = None
        self._started = monotonic()
        self._pending = []  # rows not yet written: (wall time, row)
        self._history = collections.deque()  # (monotonic time, row)
        self._lock = threading.Lock()
        self._file = None
        self._path = None
        self._lost = 0  # rows dropped by failed writes
        self._logged_at = None  # when the last write error was logged (one line a minute at most)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name=f"recorder-{name}", daemon=True)
        self._thread.start()

    def observe_frame(self, frame):
        """Queue one row per face of a published ``capture.camera.Frame`` (in the capture thread; no I/O)."""
        if frame.placeholder or not frame.faces:
            return
        now, mono = self.clock(), self.monotonic()
        stamp = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(timespec="milliseconds")
        labels = self.labels or tuple(frame.faces[0].probabilities)
        rows = [[stamp, *face_row(frame.seq, mono - self._started, face, labels)] for face in frame.faces]
        with self._lock:
            self._pending.extend((now, row) for row in rows)
            self._history.extend((mono, row) for row in rows)
            while self._history and self._history[0][0] < mono - self.history_s:
                self._history.popleft()

    def recent(self, seconds):
        """The rows of the last ``seconds`` (at most ``history_s``), oldest first, as dicts keyed by ``columns``."""
        since = self.monotonic() - min(max(float(seconds), 0.0), self.history_s)
        with self._lock:
            rows = [row for mono, row in self._history if mono >= since]
        return [dict(zip(self.columns, row)) for row in rows]

    def flush(self):
        """Write the queued rows to their hour's file and flush it; errors are logged, not raised."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            for wall_time, row in pending:
                path = hour_file(self.folder, wall_time)
                if path != self._path:
                    self._open(path)
                self._writer.writerow(row)
            self._file.flush()
            self.rows_written += len(pending)
        except OSError as e:
            self.write_errors += 1
            self.last_error = f"cannot write {self._path}: {e.strerror or e}"
            self._lost += len(pending)
            now = self.monotonic()
            if self._logged_at is None or now - self._logged_at >= 60:  # not a line a second on a full disk
                log.error("recording %s: cannot write %s (%s); %d rows lost so far, the stream goes on",
                          self.name, self._path, e.strerror or e, self._lost)
                self._logged_at = now
            self._close_file()
            return
        self._logged_at = None
        self.last_error = None

    def _open(self, path):
        self._close_file()
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if self._file.tell() == 0:
            self._writer.writerow(self.columns)

    def _close_file(self):
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
        self._file = self._path = None

    def _flush_loop(self):
        while not self._stop.wait(self.flush_s):
            self.flush()

    def close(self):
        """Stop the writer thread, write what is queued and close the file; idempotent."""
        self._stop.set()
        self._thread.join(5)
        self.flush()
        self._close_file()
