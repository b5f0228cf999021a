"""The JSON the server sends about faces: ``/api/predict``, ``/api/faces`` and ``/api/events``."""
import json
import time

from fer_server.capture.mjpeg import event_message


def model_name(classifier):
    """The model's name, or ``"unknown"`` without a classifier."""
    return getattr(classifier, "name", "unknown")


def faces_payload(faces, width, height, model):
    """The JSON shape shared by ``/api/predict``, ``/api/faces`` and ``/api/events``.

    Args:
        faces: ``vision.frames.Face`` list.
        width, height: image size in pixels (None before a first frame).
        model: the model's name.
    """
    return {"faces": [face.to_json() for face in faces], "width": width, "height": height,
            "model": model}


def with_explanations(payload, explanations):
    """Add each face's ``model.gradcam.GradCam.explain`` entry (when not None) as its ``explanation``; returns ``payload``."""
    for face, explanation in zip(payload["faces"], explanations):
        if explanation is not None:
            face["explanation"] = explanation
    return payload


def live_payload(camera, frame, model, name=None):
    """The JSON of ``/api/faces`` and ``/api/events``: ``faces_payload`` plus the source's state.

    Args:
        camera: the ``capture.camera.Camera``.
        frame: its ``capture.camera.Frame`` to describe, or None before the first one.
        model: the model's name.
        name: the source's name in URLs (``capture.camera_set.Cameras``), sent as ``name`` when given.
    """
    payload = faces_payload(frame.faces if frame else [], frame.width if frame else None,
                            frame.height if frame else None, model)
    payload.update(source=camera.name, notice=camera.notice, error=camera.error,
                   state=camera.state, frame=frame.seq if frame else None)
    if name is not None:
        payload["name"] = name
    return payload


def events_renderer(camera, model, interval_s, name=None):
    """A factory of ``render(frame) -> str``, one renderer per ``/api/events`` client.

    Each renderer gives the server-sent event of ``live_payload``
    (``data: {...}`` and a blank line), or "" when less than ``interval_s``
    seconds passed since the last event it gave.  ``name``: as ``live_payload``'s.

    Returns:
        ``() -> render``.
    """
    def new_renderer():
        last = [0.0]

        def render(frame):
            if time.monotonic() - last[0] < interval_s:
                return ""
            last[0] = time.monotonic()
            return event_message(json.dumps(live_payload(camera, frame, model, name)))

        return render

    return new_renderer
