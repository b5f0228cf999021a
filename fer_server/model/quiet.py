"""Keeping TensorFlow's start-up lines off the console: ``quiet_tensorflow``.

A context manager and a decorator (``@quiet_tensorflow()``): ``model.files.load_model``
(where TensorFlow is first imported) and ``model.classifier.Classifier`` (the
TFLite conversion and interpreter) run inside it, so every entry point that
loads a model (the server, the benchmarks, the train/ tools, batch workers
and Ray actors) is as quiet as ``python main.py``.
"""
import contextlib
import os
import re
import sys
import tempfile
import threading

#: One redirection of descriptor 2 at a time: two threads swapping it at once could leave
#: stderr pointing at the other's temporary file.  Re-entrant, so nested blocks work.
_REDIRECT = threading.RLock()

#: Start-up lines of TensorFlow and TFLite that say nothing is wrong (see ``quiet_tensorflow``).
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} |E\d{4} .*(cuda|cuInit)"
                      r"|INFO: Created TensorFlow Lite XNNPACK delegate|.*INFO Assets written to: )")


@contextlib.contextmanager
def quiet_tensorflow():
    """Keep TensorFlow's start-up chatter off the console while the model loads.

    TensorFlow's C++ code logs through Abseil before Abseil is initialised,
    and those lines go straight to file descriptor 2 whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says: oneDNN and CUDA-stub INFO lines, and on a
    machine without an NVIDIA driver a ``failed call to cuInit`` ERROR that
    looks like a fault.  Inside this block, descriptor 2 goes to a temporary
    file; at its end every line but those (``TF_NOISE``) is written to the
    real stderr, so a genuine error still shows.  Without an NVIDIA driver,
    ``CUDA_VISIBLE_DEVICES=-1`` stops TensorFlow from calling ``cuInit`` at
    all.  Variables the user set are kept.  One thread at a time holds the
    redirection (others wait); a thread may nest blocks.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not os.path.exists("/proc/driver/nvidia"):
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    with _REDIRECT, tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not TF_NOISE.match(line):
                    print(line, file=sys.stderr)
