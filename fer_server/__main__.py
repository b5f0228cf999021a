"""``python -m fer_server``: the same command line as ``python main.py`` and ``fer-server``."""
import sys

from fer_server.cli import main

sys.exit(main())
