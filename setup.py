"""Build hook: the shipped files travel inside the wheel as ``fer_server/data``.

The repository keeps one copy of ``model.json``, ``model_weights.h5``,
``model.tflite`` (the serve-only install's), ``templates/`` and ``demo/demo.mp4`` at its top level, where the design puts
them and where a checkout runs them from.  ``build_py`` copies them into the
built package so that ``pip install .`` (not editable) serves the demo clip
with the shipped model from any folder (``fer_server.config.ROOT``).
Everything else is in ``pyproject.toml``.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: Files and folders copied from the checkout's top level into ``fer_server/data``.
SHIPPED = ("model.json", "model_weights.h5", "model.tflite", "templates", "demo/demo.mp4")


class BuildWithShippedFiles(build_py):
    def run(self):
        super().run()
        data = Path(self.build_lib) / "fer_server" / "data"
        for name in SHIPPED:
            src, dst = HERE / name, data / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildWithShippedFiles})
