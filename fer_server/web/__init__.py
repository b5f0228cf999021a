"""The web side: the ASGI server and its MJPEG and event streams, the Flask app (page
and JSON API), access guards, Prometheus metrics, JSON payloads and uploads."""
