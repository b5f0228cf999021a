"""Several sources at once: their names (``--source NAME=SOURCE``) and ``Cameras``, one ``Camera`` each.

``parse_source_specs`` turns the ``--source`` values into ``(name, source)``
pairs and refuses duplicate or non-URL-safe names; ``Cameras`` keeps the
cameras in command-line order, the first being the one the routes without
a ``source`` serve.  Each ``capture.camera.Camera`` stays single-source, with its own
capture thread.
"""
import re

#: What a source name may hold: it appears in URLs (``/video_feed/<name>``) and folder names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SourceNameError(ValueError):
    """A ``--source`` name that is repeated or not URL-safe."""


class UnknownSourceError(KeyError):
    """A ``?source=`` or ``/video_feed/<name>`` that names no source; ``str()`` is the message."""

    def __str__(self):
        return self.args[0]


def parse_source_specs(specs):
    """``(name, source)`` for each ``--source`` value, in order.

    ``NAME=SOURCE`` names a source; a bare ``SOURCE`` is ``cam<i>``, ``i``
    its position (0-based).  Text before the first ``=`` that holds ``/``
    (a path or URL such as ``rtsp://h/x?a=b``) is not a name.

    Args:
        specs: list of strings.

    Returns:
        list of ``(name, source)`` string pairs.

    Raises:
        SourceNameError: a name that is not 1-64 letters, digits, ``-`` or
            ``_``, an empty source, or two sources with one name.
    """
    pairs = []
    for i, spec in enumerate(specs):
        name, sep, source = str(spec).partition("=")
        if not sep or "/" in name:
            name, source = f"cam{i}", str(spec)
        if not NAME_PATTERN.match(name):
            raise SourceNameError(f"source name {name!r} is not URL-safe: use 1-64 letters, digits, '-' or '_'")
        if not source.strip():
            raise SourceNameError(f"source {name!r} has nothing after '='")
        if any(name == other for other, _ in pairs):
            raise SourceNameError(f"two sources are named {name!r}; give each --source its own NAME=")
        pairs.append((name, source.strip()))
    return pairs


class Cameras:
    """The server's ``capture.camera.Camera`` objects by source name, in command-line order.

    Args:
        cameras: ``{name: Camera}`` (insertion order kept); at least one.
        recorders: ``{name: recording.Recorder}`` for the recorded sources
            (empty without ``--record``).
        background: the ``vision.background.BackgroundClassifier`` the
            cameras' pipelines share, closed with them; None without.

    Iterating gives ``(name, camera)`` pairs; ``first`` is the default camera.
    """

    def __init__(self, cameras, recorders=None, background=None):
        if not cameras:
            raise ValueError("Cameras needs at least one camera")
        self._cameras = dict(cameras)
        self.recorders = dict(recorders or {})
        self.background = background

    @property
    def first(self):
        """The first source's ``Camera``, served by the routes without a name."""
        return next(iter(self._cameras.values()))

    @property
    def names(self):
        """Source names, in order."""
        return list(self._cameras)

    def get(self, name=None):
        """The camera called ``name`` (None or "": the first).

        Raises:
            UnknownSourceError: no source has that name (the message lists those there are).
        """
        if not name:
            return self.first
        try:
            return self._cameras[name]
        except KeyError:
            raise UnknownSourceError(f"no source named {name!r}; sources: {', '.join(self._cameras)}") from None

    def name_of(self, camera):
        """The name under which ``camera`` is served."""
        return next(name for name, c in self._cameras.items() if c is camera)

    def __iter__(self):
        return iter(self._cameras.items())

    def __len__(self):
        return len(self._cameras)

    def start_recording(self):
        """Start capturing every recorded source now and keep it capturing, viewers or not
        (``Camera.keep_running``); sources without a recorder still wait for a viewer."""
        for name in self.recorders:
            self._cameras[name].keep_running()

    def close(self):
        """Close every recorder, then every camera (threads joined, sources released), then the
        background classification."""
        for recorder in self.recorders.values():
            recorder.close()
        for camera in self._cameras.values():
            camera.close()
        if self.background is not None:
            self.background.close()
