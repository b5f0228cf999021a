"""Classification beside the stream: the faces of every source classified on one background thread.

A live source's frame should not wait for its faces' classification: on a
2-core AVX2 machine the shipped model takes 7-9 ms per face, more than the
rest of the frame together (``docs/benchmarks.md``), and with several
sources the classifier is what they queue for.  ``BackgroundClassifier``
takes the latest crop of each tracked face (a newer crop replaces one not
yet classified, so work never piles up), classifies the sources' faces in
turn, one source's pending faces per call, and keeps each face's newest
probabilities for its pipeline to pick up on a later frame.  Its thread
runs at a lower scheduling priority (``NICE``) than the capture threads,
so frames are served first and classification gets the cores they leave;
with one source at its own frame rate that is every face of every frame,
a frame late (``FramePipeline``'s ``label_lag``).

A face new to a pipeline is still classified on its own frame by the
pipeline (``vision.pipeline.FramePipeline``), so no face is shown without
a label.  Offline analysis and the benchmarks' batch runs keep classifying
every face on its frame; this is for live sources (``Config.classify_in_background``).
"""
import logging
import os
import threading

import numpy as np

log = logging.getLogger(__name__)


class BackgroundClassifier:
    """One thread classifying the newest crop of each tracked face of several pipelines, pipelines in turn.

    Args:
        classifier: a ``model.classifier.Classifier`` used by this thread
            alone (``Classifier.predict``; the pipelines keep their own for
            new faces), best built with one interpreter thread, so that all
            its work runs on this lower-priority thread.
        nice: how much lower this thread's scheduling priority is than the
            capture threads' (Linux niceness, added to the process's; 0
            keeps it; ignored where threads cannot be given their own).
    """

    NICE = 5  # CFS weight about a third of a capture thread's: frames first, not starving labels

    def __init__(self, classifier, nice=NICE):
        self.classifier = classifier
        self.nice = nice
        self._cond = threading.Condition()
        self._pending = {}  # owner -> {track id: (crop, frame index)}, insertion-ordered
        self._results = {}  # owner -> {track id: ((C,) float32 probabilities, frame index of the crop)}
        self._turn = []  # owners in the order they came; served cyclically after the last one served
        self._last = None
        self._thread = None
        self._closed = False
        #: Faces classified and calls made so far; for benchmarks and tests.
        self.faces_classified, self.calls = 0, 0

    def submit(self, owner, track_id, crop, frame_index):
        """Queue ``crop`` (``(H, W, C)`` float32 in [0, 1]) of face ``track_id`` of ``owner`` (its pipeline),
        taken on ``owner``'s frame ``frame_index``; it replaces a crop of that face not yet classified.

        Raises:
            RuntimeError: after ``close``.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("the background classifier is closed")
            if owner not in self._pending:
                self._pending[owner] = {}
                self._turn.append(owner)
            self._pending[owner][track_id] = (crop, frame_index)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="classify-background", daemon=True)
                self._thread.start()
            self._cond.notify()

    def take(self, owner, track_id):
        """The probabilities classified for face ``track_id`` of ``owner`` since the last ``take``:
        ``((C,) float32, frame index of its crop)``, or None when there are none."""
        with self._cond:
            return self._results.get(owner, {}).pop(track_id, None)

    def keep(self, owner, track_ids):
        """Forget the pending crops and results of ``owner``'s faces not in ``track_ids`` (faces gone)."""
        track_ids = set(track_ids)
        with self._cond:
            for table in (self._pending.get(owner), self._results.get(owner)):
                if table:
                    for track_id in [t for t in table if t not in track_ids]:
                        del table[track_id]

    def forget(self, owner):
        """Drop everything of ``owner`` (a pipeline reset or closed)."""
        with self._cond:
            self._pending.pop(owner, None)
            self._results.pop(owner, None)
            if owner in self._turn:
                self._turn.remove(owner)

    def pending(self):
        """How many crops wait to be classified."""
        with self._cond:
            return sum(len(p) for p in self._pending.values())

    def close(self, timeout=5.0):
        """Stop the thread after the call in progress; pending crops are dropped."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self):
        """The next owner after the last one served with pending crops, and those crops (taken off the
        queue); None when no crop waits."""
        count = len(self._turn)
        start = self._turn.index(self._last) + 1 if self._last in self._turn else 0
        for k in range(count):
            owner = self._turn[(start + k) % count]
            work = self._pending.get(owner)
            if work:
                self._pending[owner] = {}
                self._last = owner
                return owner, work
        return None

    def _run(self):
        if self.nice:
            try:  # Linux gives each thread its own niceness: this one's work yields to the frames'
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0)
                               + self.nice)
            except (AttributeError, OSError) as e:
                log.debug("background classification keeps the process's priority: %s", e)
        while True:
            with self._cond:
                batch = self._next_batch()
                while batch is None and not self._closed:
                    self._cond.wait()
                    batch = self._next_batch()
                if self._closed:
                    return
            owner, work = batch
            track_ids = list(work)
            try:
                probs = self.classifier.predict(np.stack([work[t][0] for t in track_ids]))
            except Exception:  # a bad crop must not end the thread: its faces keep their last labels
                log.exception("background classification failed")
                continue
            with self._cond:
                self.faces_classified += len(track_ids)
                self.calls += 1
                if owner in self._turn:  # not forgotten meanwhile
                    results = self._results.setdefault(owner, {})
                    for track_id, p in zip(track_ids, probs):
                        results[track_id] = (p, work[track_id][1])
