"""Capture: video sources, the shared capture thread per source (``Camera``), several
sources by name (``Cameras``), MJPEG parts, and recording what each source showed."""
