"""The wire formats of the two live streams: MJPEG parts and server-sent events.

``/video_feed`` is ``multipart/x-mixed-replace; boundary=frame``: each part
is one JPEG with its ``Content-Type`` and ``Content-Length``.
``/api/events`` is ``text/event-stream``.  Both are sent unbuffered and
uncached.
"""

#: The MJPEG boundary used in ``multipart/x-mixed-replace; boundary=frame``.
BOUNDARY = "frame"
#: Content type of ``/video_feed``.
VIDEO_FEED_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
#: Content type of ``/api/events``.
EVENTS_TYPE = "text/event-stream"
#: The first message of ``/api/events``: clients reconnect 2 s after a drop.
EVENTS_PREAMBLE = "retry: 2000\n\n"
#: Headers of both streams: not cached, not buffered by a proxy.
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


#: Values of a part's ``X-Frame-Kind`` header: a processed frame from the
#: source, a grey placeholder published while the source reconnects, or the
#: latest part sent again to a viewer after seconds without news.
PART_KINDS = ("frame", "placeholder", "keepalive")


def mjpeg_part(jpeg, kind="frame"):
    """Wrap JPEG bytes as one part of an MJPEG ``multipart/x-mixed-replace`` stream.

    Args:
        jpeg: the encoded image, bytes.
        kind: one of ``PART_KINDS``, sent as the part's ``X-Frame-Kind``
            header so that clients and tests can tell real frames from
            placeholders and keep-alives (browsers ignore it).

    Returns:
        bytes: ``--frame``, the part's headers, a blank line, the JPEG and CRLF.
    """
    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nX-Frame-Kind: {kind}\r\n"
            f"Content-Length: {len(jpeg)}\r\n\r\n").encode("ascii")
    return head + jpeg + b"\r\n"


def event_message(data):
    """One server-sent event carrying ``data`` (a JSON text on one line): ``data: ...`` and a blank line."""
    return f"data: {data}\n\n"
