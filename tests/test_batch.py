"""Batch analysis (batch.py): a folder of generated clips with a subfolder, a broken .mp4,
a video that breaks halfway and a text file; through the pool, in-process and on a local Ray."""
import csv
import io
import os
import shutil
import time

import cv2
import numpy as np
import pytest

from fer_server import cli
from fer_server.face_csv import CSV_COLUMNS
from fer_server.offline.batch import run_batch
from fer_server.offline.jobs import SUMMARY_HEAD, plan_jobs, process_video
from fer_server.config import Config

CLIP_FRAMES = 35  # tests/fixtures/clip.mp4: one face in (nearly) every frame
PLAIN_FRAMES = 12  # the generated grey clip: no face


def write_plain_clip(path, frames=PLAIN_FRAMES, fourcc="MJPG"):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (96, 64))
    for i in range(frames):
        writer.write(np.full((64, 96, 3), 40 + 5 * i, np.uint8))
    writer.release()


def make_folder(root, clip):
    """videos/a.mp4, videos/sub/b.mp4 (copies of the face clip), videos/sub/plain.avi (no face),
    videos/broken.mp4 (random bytes), videos/half.avi (cut in the middle), videos/notes.txt."""
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    shutil.copy(clip, videos / "a.mp4")
    shutil.copy(clip, videos / "sub" / "b.mp4")
    write_plain_clip(videos / "sub" / "plain.avi")
    (videos / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    write_plain_clip(root / "whole.avi", frames=40)
    data = (root / "whole.avi").read_bytes()
    (videos / "half.avi").write_bytes(data[:len(data) // 2])
    (videos / "notes.txt").write_text("not a video\n")
    return videos


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary(out):
    return {row["video"]: row for row in read_csv(out / "summary.csv")}


def mtimes(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def config(tiny_model_files):
    return Config(model_path=tiny_model_files[0], weights_path=tiny_model_files[1])


@pytest.fixture(scope="module")
def pooled(tmp_path_factory, clip, config):
    """One pool run (2 workers) over the folder: ``(videos, out, exit code, printed)``."""
    root = tmp_path_factory.mktemp("batch")
    videos = make_folder(root, clip)
    printed = io.StringIO()
    code = run_batch(videos, root / "out", workers=2, config=config, progress=False, out=printed)
    return videos, root / "out", code, printed.getvalue()


def test_summary_rows_and_csvs(pooled):
    videos, out, code, printed = pooled
    assert code == 1  # two videos failed; the batch went on
    rows = summary(out)
    assert sorted(rows) == ["a.mp4", "broken.mp4", "half.avi", "sub/b.mp4", "sub/plain.avi"]  # no notes.txt
    assert tuple(read_csv(out / "summary.csv")[0])[:len(SUMMARY_HEAD)] == SUMMARY_HEAD
    for name in ("a.mp4", "sub/b.mp4"):
        row = rows[name]
        assert (row["status"], row["error"], int(row["frames"]), float(row["duration_s"])) == ("ok", "", 35, 3.5)
        assert 30 <= int(row["faces"]) == int(row["frames_with_face"]) <= CLIP_FRAMES
        assert abs(sum(float(v) for k, v in row.items() if k.startswith("share_")) - 1) < 1e-3
        assert 1 / 7 <= float(row["mean_confidence"]) <= 1
    plain = rows["sub/plain.avi"]
    assert (plain["status"], int(plain["frames"]), int(plain["faces"])) == ("ok", PLAIN_FRAMES, 0)
    assert float(plain["duration_s"]) == PLAIN_FRAMES / 10

    assert rows["broken.mp4"]["status"] == "error"
    assert "cannot be decoded" in rows["broken.mp4"]["error"]
    assert rows["half.avi"]["status"] == "error"
    assert "stopped decoding after" in rows["half.avi"]["error"] and "of its 40 frames" in rows["half.avi"]["error"]

    table = read_csv(out / "sub" / "b.csv")
    assert tuple(table[0])[:9] == CSV_COLUMNS
    assert len(table) == int(rows["sub/b.mp4"]["faces"])
    assert (out / "sub" / "plain.csv").read_text().startswith("frame,time_s,face_id")
    assert len(read_csv(out / "sub" / "plain.csv")) == 0
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if not p.name.startswith(".")}
    assert names == {"summary.csv", "a.csv", "sub", "sub/b.csv", "sub/plain.csv"}  # nothing for the errors
    assert "3 videos ok, 2 errors, 0 skipped" in printed and "1 other files ignored" in printed
    assert "82 frames analysed" in printed


def test_serial_gives_the_pools_rows(pooled, tmp_path, config):
    videos, out, _, _ = pooled
    assert run_batch(videos, tmp_path, workers=0, config=config, progress=False, out=io.StringIO()) == 1
    for name in ("a.csv", "sub/b.csv", "sub/plain.csv"):
        assert read_csv(tmp_path / name) == read_csv(out / name)
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(tmp_path / "summary.csv")] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(out / "summary.csv")]


def test_rerun_skips_then_redoes_a_changed_video_then_force(pooled, config):
    videos, out, _, _ = pooled
    before = mtimes(out)
    printed = io.StringIO()
    started = time.perf_counter()
    assert run_batch(videos, out, workers=2, config=config, progress=False, out=printed) == 1
    assert time.perf_counter() - started < 5  # no worker started
    assert "5 skipped as done before" in printed.getvalue() and "0 frames analysed" in printed.getvalue()
    after = mtimes(out)
    assert {k: v for k, v in after.items() if k != "summary.csv"} == \
        {k: v for k, v in before.items() if k != "summary.csv"}
    assert summary(out)["broken.mp4"]["status"] == "error"  # error rows are kept

    os.utime(videos / "sub" / "b.mp4", ns=(time.time_ns(), time.time_ns()))  # "changed" input
    printed = io.StringIO()
    assert run_batch(videos, out, workers=1, config=config, progress=False, out=printed) == 1
    assert "4 skipped as done before" in printed.getvalue() and "35 frames analysed in 1 videos" in printed.getvalue()
    changed = mtimes(out)
    assert changed["sub/b.csv"] > after["sub/b.csv"] and changed["a.csv"] == after["a.csv"]

    printed = io.StringIO()
    assert run_batch(videos, out, workers=2, force=True, config=config, progress=False, out=printed) == 1
    assert "0 skipped as done before" in printed.getvalue() and "82 frames analysed in 5 videos" in printed.getvalue()
    forced = mtimes(out)
    assert all(forced[name] > changed[name] for name in ("a.csv", "sub/b.csv", "sub/plain.csv"))
    assert summary(out)["a.mp4"]["frames"] == str(CLIP_FRAMES)


def test_annotated_videos_glob_list_and_main(tmp_path, clip, tiny_model_files, capsys):
    videos = make_folder(tmp_path, clip)
    listing = tmp_path / "list.txt"
    listing.write_text(f"videos/a.mp4\n\n# a comment\n{videos / 'sub' / 'plain.avi'}\n")
    model = ["--model", str(tiny_model_files[0]), "--weights", str(tiny_model_files[1])]
    assert cli.main(["--source", str(listing), "--csv-dir", str(tmp_path / "l"), "--output-dir",
                      str(tmp_path / "v"), "--workers", "0", *model]) == 0
    assert sorted(summary(tmp_path / "l")) == ["a.mp4", "sub/plain.avi"]  # relative to their common folder
    cap = cv2.VideoCapture(str(tmp_path / "v" / "sub" / "plain.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == PLAIN_FRAMES
    cap.release()
    assert "2 videos ok, 0 errors" in capsys.readouterr().out

    assert cli.main(["--source", str(videos / "**" / "*.mp4"), "--csv-dir", str(tmp_path / "g"),
                      "--workers", "0", *model]) == 1
    assert sorted(summary(tmp_path / "g")) == ["a.mp4", "broken.mp4", "sub/b.mp4"]


def test_same_stem_keeps_the_extension(tmp_path):
    (tmp_path / "in").mkdir()
    videos = [tmp_path / "in" / name for name in ("a.avi", "a.mp4", "b.mp4", "summary.mkv")]
    jobs = plan_jobs(tmp_path / "in", videos, tmp_path / "out", tmp_path / "ann")
    assert [os.path.relpath(j.csv_path, tmp_path / "out") for j in jobs] == \
        ["a.avi.csv", "a.mp4.csv", "b.csv", "summary.mkv.csv"]
    assert os.path.relpath(jobs[2].annotated, tmp_path / "ann") == "b.mp4"


class InterruptingPipeline:
    """Finds no face; raises KeyboardInterrupt (Ctrl-C) at the 5th frame."""

    class classifier:
        labels = ("Happy", "Sad")

    def __init__(self):
        self.frames = 0

    def reset(self, restart_ids=False):
        pass

    def process(self, frame):
        self.frames += 1
        if self.frames == 5:
            raise KeyboardInterrupt
        return frame, []


def test_ctrl_c_leaves_no_partial_file(tmp_path, clip):
    shutil.copy(clip, tmp_path / "a.mp4")
    job = plan_jobs(tmp_path, [tmp_path / "a.mp4"], tmp_path / "out", tmp_path / "ann")[0]
    with pytest.raises(KeyboardInterrupt):
        process_video(job, InterruptingPipeline(), ("Happy", "Sad"))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / "a.mp4"]


def test_a_killed_runs_temporaries_are_removed(pooled, config):
    videos, out, _, _ = pooled
    leftover = out / "sub" / ".b.partial4242.csv"
    leftover.write_text("frame,time_s\n0,")
    run_batch(videos, out, workers=2, config=config, progress=False, out=io.StringIO())
    assert not leftover.exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a folder, a glob, a list file or a video"),
    ("no videos", "no video file"),
    ("unwritable", "cannot write to the output folder"),
    ("ray", "cannot reach the Ray cluster at 127.0.0.1:9"),
])
def test_bad_input_exits_2_before_any_work(tmp_path, config, capsys, case, message):
    source, out = tmp_path / "videos", tmp_path / "out"
    source.mkdir()
    if case != "no videos":
        shutil.copy(config.model_path, source / "x.mp4")
    (source / "notes.txt").write_text("x")
    if case == "missing":
        source = tmp_path / "nowhere"
    if case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    started = time.perf_counter()
    code = run_batch(source, out, workers=1, ray_address="127.0.0.1:9" if case == "ray" else None, config=config)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert time.perf_counter() - started < 8
    assert not (out / "summary.csv").exists()


@pytest.fixture
def local_ray():
    """A real local Ray instance with 2 CPUs, shut down after the test."""
    ray = pytest.importorskip("ray", reason="Ray is in requirements-ray.txt; pip install -r requirements-ray.txt")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(os.path.dirname(os.path.dirname(__file__)))}})
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_files_and_rows(pooled, tmp_path, config, local_ray):
    videos, out, _, _ = pooled
    printed = io.StringIO()
    assert run_batch(videos, tmp_path, ray_address="", config=config, progress=False, out=printed) == 1
    assert "3 videos ok, 2 errors, 0 skipped" in printed.getvalue() and ", ray)" in printed.getvalue()
    assert local_ray.is_initialized()  # an instance it did not start is left running
    for name in ("a.csv", "sub/b.csv", "sub/plain.csv"):
        assert read_csv(tmp_path / name) == read_csv(out / name)
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(tmp_path / "summary.csv")] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(out / "summary.csv")]
    before = mtimes(tmp_path)
    assert run_batch(videos, tmp_path, ray_address="", config=config, progress=False, out=io.StringIO()) == 1
    assert {k: v for k, v in mtimes(tmp_path).items() if k != "summary.csv"} == \
        {k: v for k, v in before.items() if k != "summary.csv"}


def test_local_path_and_server_never_import_ray(tmp_path, clip, tiny_model_files):
    import subprocess
    import sys

    shutil.copy(clip, tmp_path / "a.mp4")
    code = ("import sys\nfrom fer_server import cli\nimport fer_server.web.app, fer_server.web.server, fer_server.offline.batch\n"
            f"assert cli.main(['--source', {str(tmp_path)!r}, '--csv-dir', {str(tmp_path / 'out')!r}, "
            f"'--workers', '0', '--model', {str(tiny_model_files[0])!r}, "
            f"'--weights', {str(tiny_model_files[1])!r}]) == 0\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "a.csv").is_file()


def crash_on_b(job, pipeline, labels):
    """Per-video work for the pool that kills its worker process on sub/b.mp4, as a decoder crash would."""
    if job.video == "sub/b.mp4":
        os._exit(11)
    return process_video(job, pipeline, labels)


def test_a_crashing_worker_fails_only_its_video(tmp_path, clip, config):
    from fer_server.offline.engines import pool_rows
    from fer_server.offline.jobs import find_videos, read_labels

    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    shutil.copy(clip, videos / "a.mp4")
    shutil.copy(clip, videos / "sub" / "b.mp4")
    write_plain_clip(videos / "sub" / "plain.avi")
    root, found, _ = find_videos(videos)
    jobs = plan_jobs(root, found, tmp_path / "out")
    rows = {row["video"]: row for row in pool_rows(jobs, config, read_labels(config.model_path), 2, [],
                                                    run=crash_on_b)}
    assert sorted(rows) == ["a.mp4", "sub/b.mp4", "sub/plain.avi"]
    assert (rows["a.mp4"]["status"], rows["a.mp4"]["frames"]) == ("ok", CLIP_FRAMES)
    assert (rows["sub/plain.avi"]["status"], rows["sub/plain.avi"]["frames"]) == ("ok", PLAIN_FRAMES)
    assert rows["sub/b.mp4"]["status"] == "error" and "died while analysing it, twice" in rows["sub/b.mp4"]["error"]
    assert not (tmp_path / "out" / "sub" / "b.csv").exists()
    assert (tmp_path / "out" / "sub" / ".b.csv.done.json").is_file()  # a rerun keeps the error row
