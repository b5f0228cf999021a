"""``Camera``: one capture thread per source, its annotated frames shared by every viewer.

Re-exported from ``fer_server.capture.camera``; see there.
"""
from fer_server.capture.camera import Camera, Frame

__all__ = ["Camera", "Frame"]
