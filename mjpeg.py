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


def mjpeg_part(jpeg):
    """Wrap JPEG bytes as one part of an MJPEG ``multipart/x-mixed-replace`` stream.

    Args:
        jpeg: the encoded image, bytes.

    Returns:
        bytes: ``--frame``, the part's headers, a blank line, the JPEG and CRLF.
    """
    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(jpeg)}\r\n\r\n").encode("ascii")
    return head + jpeg + b"\r\n"


def event_message(data):
    """One server-sent event carrying ``data`` (a JSON text on one line): ``data: ...`` and a blank line."""
    return f"data: {data}\n\n"
