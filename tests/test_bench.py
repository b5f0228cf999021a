"""Smoke tests of the benchmarks: each runs a second or two on the fixture clip and prints sane figures."""
import json
import sys

import pytest

from train.model import build_model

CLIP_FRAMES = 35  # tests/fixtures/clip.mp4: 35 frames of 320x240 at 10 fps, one face in each


def last_json(text):
    """The last line of ``text``, parsed as JSON."""
    return json.loads(text.strip().splitlines()[-1])


class StubFER:
    """Stands in for the ``fer`` package's ``FER``: one face per frame, its top emotion "happy" at 0.7."""

    calls = []

    def __init__(self, mtcnn=True):
        assert mtcnn is False  # the bench asks for its Haar cascade, not MTCNN

    def detect_emotions(self, frame):
        self.calls.append(frame.shape)
        return [{"box": [10, 20, 30, 40], "emotions": {"angry": 0.1, "happy": 0.7, "neutral": 0.2}}]


def test_bench_fast_baseline_and_fer_pipelines(clip, tiny_model_files, capsys, monkeypatch):
    import types

    from bench.__main__ import main

    monkeypatch.setitem(sys.modules, "fer", types.SimpleNamespace(FER=StubFER))
    StubFER.calls = []
    model_path, weights_path = tiny_model_files
    main(["--source", str(clip), "--seconds", "0.5", "--baseline", "--fer", "--json", "--detect-every", "1",
          "--model", str(model_path), "--weights", str(weights_path)])
    out = capsys.readouterr().out
    assert f"clip.mp4: 320x240, {CLIP_FRAMES} frames at 10 fps; detect_every=1" in out
    result = last_json(out)
    assert result["video"] == "clip.mp4" and result["size"] == "320x240" and result["video_fps"] == 10
    # the fast path runs at least one whole pass; the first pass sees the one face of every frame
    assert result["frames"] >= CLIP_FRAMES and result["pass_frames"] == CLIP_FRAMES
    assert result["frames_with_face"] == CLIP_FRAMES and result["faces_classified"] == CLIP_FRAMES
    # unpaced: far faster than the clip's own 10 fps (a paced or stalled fast path fails here)
    assert result["fps"] > 15 and 0 < result["p50_ms"] <= result["p95_ms"]
    assert set(result["stages"]) == {"decode", "detect", "classify", "draw", "encode"}
    baseline = result["baseline"]
    assert baseline["frames"] == CLIP_FRAMES and baseline["pass_frames"] == CLIP_FRAMES  # exactly one pass
    assert baseline["frames_with_face"] == CLIP_FRAMES and baseline["faces_classified"] == CLIP_FRAMES
    # the server's path (downscaled Haar, one batched TFLite call per frame) beats the naive one
    # (full-resolution Haar at scaleFactor 1.1, one model.predict call per face)
    assert baseline["fps"] > 0 and result["speedup"] > 1
    # the fer package (a stub here) on one pass: every BGR frame once, its one face per frame counted
    fer = result["fer"]
    assert StubFER.calls == [(240, 320, 3)] * CLIP_FRAMES
    assert fer["frames"] == CLIP_FRAMES and fer["faces_classified"] == CLIP_FRAMES
    assert fer["stages"]["classify"]["p95"] == 0  # its search and classification are one call: "detect"
    assert result["speedup_fer"] == round(result["fps"] / fer["fps"], 2)
    assert "fast/fer" in out and "fast/baseline" in out


def test_bench_fer_without_the_package_says_how_to_get_it(clip, monkeypatch):
    from bench.__main__ import main

    monkeypatch.setitem(sys.modules, "fer", None)  # import fer raises ImportError
    with pytest.raises(SystemExit, match="--fer needs the fer package .*docs/benchmarks.md"):
        main(["--source", str(clip), "--fer"])


def test_bench_refuses_a_file_that_is_not_a_video(tmp_path):
    from bench.__main__ import main

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(SystemExit, match="junk.mp4 is not a video OpenCV can decode"):
        main(["--source", str(junk)])


def test_bench_inference_times_every_backend(tiny_model_files, capsys):
    from bench.inference import main
    from fer_server.model.classifier import Classifier

    main(["--model", str(tiny_model_files[0]), "--weights", str(tiny_model_files[1]), "--seconds", "0.05",
          "--json"])
    out = capsys.readouterr().out
    result = last_json(out)
    assert result["model"] == "fer_vgg4" and result["parameters"] == build_model(7, width=4).count_params()
    assert set(result) == {"model", "parameters", "runtime", *Classifier.BACKENDS}
    assert result["runtime"] == "tensorflow"  # this venv has TensorFlow: every backend, not LiteRT's one
    for backend in Classifier.BACKENDS:
        assert result[backend]["ms_per_face_batch1"] > 0 and result[backend]["faces_per_s_batch32"] > 0
        assert f"{backend:12s} batch 1: " in out


def test_time_predict_measures_a_known_cost():
    """A stand-in classifier that takes 20 ms a call: ``time_predict`` reports 20 ms, not counting its warm-up."""
    import time

    from bench.inference import time_predict

    class Slow:
        input_shape = (48, 48, 1)
        calls = 0

        def predict(self, x):
            assert x.shape == (32, 48, 48, 1) and x.dtype == "float32" and 0 <= x.min() and x.max() <= 1
            self.calls += 1
            time.sleep(0.02)

    slow = Slow()
    seconds = time_predict(slow, 32, 0.3)
    assert 0.019 <= seconds <= 0.03 and slow.calls >= 2


def test_bench_clients_serves_the_clip_through_main_py(clip, tiny_model_files, capsys):
    """``main.py`` in a subprocess: ``run_clients`` terminates it in a ``finally``."""
    from bench.clients import main

    main(["--source", str(clip), "--clients", "1,2", "--seconds", "1",
          "--model", str(tiny_model_files[0]), "--weights", str(tiny_model_files[1])])
    out = capsys.readouterr().out
    result = last_json(out)
    assert result["source"] == str(clip) and result["startup_s"] > 0
    assert [run["clients"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        # the clip plays at 10 fps: each client gets frames, and none more than the source gives in the
        # second (10, or 11 by phase), the latest frame sent on connecting and one part begun at the deadline
        # (a server sending a few frames a second fails the lower bound)
        assert 6 <= run["fps_per_client_min"] <= run["fps_per_client_mean"] <= 13
        assert run["server_cpu_percent"] > 0
    assert "first frame" in out and "2 client(s)" in out


def test_bench_load_with_viewers_and_api_requests(clip, capsys):
    """``main.py`` (the shipped model) in a subprocess, 2 viewers and 2 API requests per second for 2 s."""
    from bench.load import main

    main(["--source", str(clip), "--clients", "2", "--rps", "2", "--seconds", "2", "--json"])
    out = capsys.readouterr().out
    result = last_json(out)
    assert result["clients"] == 2 and result["rps"] == 2 and result["seconds"] >= 2
    assert result["viewer_errors"] == 0 and result["api_errors"] == 0, out
    assert result["connections"] == 2 and result["fps_per_viewer_min"] >= 5  # a 10 fps clip
    assert result["api_requests"] >= 2 and 0 < result["api_ms"]["p50"] <= result["api_ms"]["p99"]
    assert len(result["samples"]) >= 1 and all(rss > 0 for rss in result["server_rss_mb"])
    assert "2 viewers + 2 API req/s" in out and "0 viewer errors, 0 API errors" in out


def test_entry_points_keep_tensorflows_start_up_lines_off_the_console(tiny_model_files, tmp_path):
    """``python -m bench.inference`` and ``python -m train.evaluate`` load a model through ``model.files`` and
    ``model.classifier``, which filter TensorFlow's start-up lines as ``main.py`` does, and the train/ package
    imports TensorFlow quietly before its tools import Keras: stderr has none."""
    import os
    import subprocess
    import sys

    import cv2
    import numpy as np

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model, weights = map(str, tiny_model_files)
    (tmp_path / "Happy").mkdir()
    cv2.imwrite(str(tmp_path / "Happy" / "a.png"), np.full((96, 96), 128, np.uint8))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "CUDA_"))}
    for argv in (["-m", "bench.inference", "--seconds", "0.05", "--model", model, "--weights", weights],
                 ["-m", "train.evaluate", "--data", str(tmp_path), "--model", model, "--weights", weights],
                 # a train/ tool that builds a Keras model itself (train/__init__.py imports TensorFlow quietly)
                 ["-c", "import train.model as m; m.build_model(width=4)(m.keras.ops.zeros((1, 48, 48, 1)))"]):
        result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=root, env=env,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        noise = [line for line in result.stderr.splitlines()
                 if any(word in line for word in ("cuda", "cuInit", "oneDNN", "absl::", "cpu_feature_guard",
                                                  "XNNPACK", "I0000", "W0000"))]
        assert noise == [], (argv[1], noise)


def test_longest_gap_counts_real_frames_only_by_hand():
    from bench.load import longest_gap

    # connected at 0, frames at 1 and 2, a reconnection at 5 (not a frame), a frame at 6, end at 6.5:
    # the gaps are 1, 1, 4 (2 -> 6, the reconnection does not reset it) and 0.5
    assert longest_gap([1.0, 2.0, 6.0], [0.0, 5.0], 6.5) == 4.0
    assert longest_gap([], [3.0], 10.0) == 7.0  # never a real frame: from the connection to the end
    assert longest_gap([0.5, 0.6], [0.0], 0.7) == 0.5  # the wait for the first frame


def test_bench_search_matches_served_boxes_to_reference_faces_one_to_one():
    from bench.search import matched

    reference = [(0, 0, 100, 100), (200, 0, 100, 100)]
    assert matched([(10, 10, 100, 100)], reference) == 1  # IoU 0.68 with the first
    assert matched([(10, 10, 100, 100), (0, 0, 100, 100)], reference) == 1  # two boxes, one face: one match
    assert matched([(70, 70, 100, 100)], reference) == 0  # IoU 900 / 19100 = 0.05: no match
    assert matched([(205, 0, 100, 100), (0, 5, 100, 100)], reference) == 2
    assert matched([], reference) == 0 and matched([(0, 0, 100, 100)], []) == 0


def test_lag_quantile_reads_the_bucket_of_the_quantile_between_two_scrapes():
    from bench.clients import lag_quantile

    inf = float("inf")
    before = {0.0: 2, 1.0: 5, 2.0: 5, inf: 6}
    after = {0.0: 4, 1.0: 12, 2.0: 15, inf: 16}  # between them: 2 lags of 0, 5 of 1, 3 of 2 (10 in all)
    assert lag_quantile(before, after, 0.5) == 1.0  # 7 of 10 are <= 1
    assert lag_quantile(before, after, 0.2) == 0.0  # 2 of 10 are <= 0
    assert lag_quantile(before, after, 0.95) == 2.0
    assert lag_quantile(after, after, 0.5) is None  # nothing observed in between
