"""Real-time facial expression recognition: a server, and a library with one front door.

    import fer_server
    result = fer_server.analyze("photo.jpg")      # path, bytes, or a BGR/gray uint8 array
    for face in result["faces"]:
        print(face["box"], face["label"], face["confidence"])

``analyze`` loads the shipped model once and reuses it; ``Recognizer`` is
for callers who choose the model files and backend themselves, and also
analyses videos.  Bad input raises ``FerError``.  Importing this package
is cheap: TensorFlow is loaded by the first analysis, not here.

Layout: ``capture`` (sources, cameras, recording), ``vision`` (detector,
tracker, frame pipeline), ``model`` (files, classifier, Grad-CAM), ``web``
(server, app, streams), ``offline`` (video and batch analysis), ``cli``
(the command line), ``config`` (every setting), ``builders`` (wiring).
"""
__version__ = "0.2.0"
__all__ = ["analyze", "Recognizer", "FerError", "__version__"]


def __getattr__(name):
    if name in ("analyze", "Recognizer", "FerError"):
        from fer_server import recognizer
        return getattr(recognizer, name)
    raise AttributeError(f"module 'fer_server' has no attribute {name!r}")
