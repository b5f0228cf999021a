"""Serve live facial expression recognition over HTTP, or analyse video files offline.

    python main.py                      # webcam 0, or the demo clip without one
    python main.py --source video.mp4   # a video file, looped
    python main.py --source in.mp4 --output annotated.mp4 --csv faces.csv   # offline, no server

Every flag: ``python main.py --help``.  The code is the ``fer_server`` package;
this file is its command line (``fer_server.cli``), as is ``fer-server`` once
installed and ``python -m fer_server``.
"""
import sys

from fer_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
