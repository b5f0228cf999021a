"""Training and evaluation tools, run from the checkout (``python -m train.<tool>``).

Several of them import Keras at module level; TensorFlow, its backend, is
imported and its devices started here first, inside ``quiet_tensorflow``, so
that its start-up lines stay off the console, as for ``main.py``.  Where TensorFlow is not installed
(the PyTorch-only tools on a GPU machine) or another Keras backend is asked
for, nothing is imported.  In the serve-only install (``requirements-serve.txt``:
neither Keras nor PyTorch) every tool stops here with one sentence.
"""
import importlib.util
import os
import sys

if not any(importlib.util.find_spec(name) for name in ("keras", "torch")):
    print("error: the training and evaluation tools need the full install (TensorFlow and Keras), which "
          "requirements-serve.txt leaves out: pip install -r requirements.txt", file=sys.stderr)
    sys.exit(2)

if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" and importlib.util.find_spec("tensorflow"):
    from fer_server.model.quiet import quiet_tensorflow

    with quiet_tensorflow():
        import tensorflow

        tensorflow.config.list_logical_devices()  # device start-up (cuInit) inside the filter too
