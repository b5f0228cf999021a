"""``config``: every setting is a flag and an environment variable; ``main``'s start-up checks."""
import argparse
import dataclasses
import os
import socket
from pathlib import Path

import pytest

from fer_server import cli
from fer_server.config import Config, add_config_arguments, config_from_args, field_help


def parse(argv, environ=None):
    p = argparse.ArgumentParser()
    add_config_arguments(p, environ=environ or {})
    return config_from_args(p.parse_args(argv))


def test_every_field_has_a_flag_with_its_own_help():
    helps = field_help()
    assert set(helps) == {f.name for f in dataclasses.fields(Config)}
    assert helps["jpeg_quality"] == "0-100, for the MJPEG frames."
    text = argparse.ArgumentParser()
    add_config_arguments(text, environ={})
    flags = text.format_help()
    for flag in ("--detect-every", "--jpeg-quality", "--model", "--weights", "--no-loop", "--backend"):
        assert flag in flags


def test_flags_environment_and_defaults():
    assert parse([]) == Config()
    config = parse(["--detect-every", "3", "--no-loop", "--model", "m.json", "--smoothing", "0.25"])
    assert (config.detect_every, config.loop, config.model_path, config.smoothing) == (3, False, Path("m.json"), 0.25)
    environ = {"FER_SERVER_JPEG_QUALITY": "55", "FER_SERVER_LOOP": "off", "FER_SERVER_PORT": "6000"}
    config = parse([], environ)
    assert (config.jpeg_quality, config.loop, config.port) == (55, False, 6000)
    assert parse(["--jpeg-quality", "90"], environ).jpeg_quality == 90  # the flag wins


def test_a_bad_environment_value_is_named():
    with pytest.raises(ValueError, match="FER_SERVER_DETECT_EVERY"):
        parse([], {"FER_SERVER_DETECT_EVERY": "often"})


def test_preflight_refuses_bad_input_with_one_sentence(tmp_path, clip):
    """(That it does so without importing TensorFlow is checked in a fresh process:
    test_package.test_main_py_refuses_a_missing_video_without_importing_tensorflow.)"""
    with pytest.raises(RuntimeError, match="missing.mp4 does not exist"):
        cli.preflight(Config(source=str(tmp_path / "missing.mp4")))
    with pytest.raises(RuntimeError, match="architecture .*nope.json: no such file"):
        cli.preflight(Config(source=str(clip), model_path=tmp_path / "nope.json"))
    with pytest.raises(RuntimeError, match="analyse a video file"):
        cli.preflight(Config(source="0"), offline=True)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
        cli.preflight(Config(source=str(clip), port=port))
    taken.close()
    listener = cli.preflight(Config(source=str(clip), port=0))
    assert listener.getsockname()[0] == "127.0.0.1"
    listener.close()


def test_quiet_tensorflow_drops_the_noise_and_keeps_real_errors(capfd):
    from fer_server.model.classifier import quiet_tensorflow

    with quiet_tensorflow():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1795990621.006384    2226 cudart_stub.cc:31] Could not find cuda drivers\n"
                    b"E0000 00:00:1795990632.760820    2261 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
                    b"E0000 00:00:1795990632.760820    2261 something.cc:1] a real failure\n")
    err = capfd.readouterr().err
    assert err.splitlines() == ["E0000 00:00:1795990632.760820    2261 something.cc:1] a real failure"]


def test_the_top_level_holds_only_thin_entry_points():
    """The code lives in ``fer_server``; the checkout's top level keeps the design's entry points (what
    the wheel carries is checked in test_package.py)."""
    root = Path(__file__).resolve().parent.parent
    assert sorted(p.name for p in root.glob("*.py")) == ["camera.py", "main.py", "setup.py"]
    for name in ("camera.py", "main.py"):
        code = [line for line in (root / name).read_text().splitlines() if line.strip()]
        assert sum(not line.startswith((" ", '"', "#")) for line in code) <= 6, name
