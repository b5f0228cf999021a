import csv

import cv2

from fer_server import cli
from fer_server.face_csv import CSV_COLUMNS


def model_args(tiny_model_files):
    model_path, weights_path = tiny_model_files
    return ["--model", str(model_path), "--weights", str(weights_path)]


def test_csv_and_annotated_video(tmp_path, clip, tiny_model_files, capsys):
    out, table = tmp_path / "annotated.mp4", tmp_path / "faces.csv"
    code = cli.main(["--source", str(clip), "--output", str(out), "--csv", str(table),
                      *model_args(tiny_model_files)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "35 frames" in printed and "Share of face observations" in printed

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0])[:9] == CSV_COLUMNS
    assert list(rows[0])[9:] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert 30 <= len(rows) <= 35  # one face per frame, found in (nearly) every frame
    for row in rows:
        assert 0 <= int(row["frame"]) < 35
        assert float(row["time_s"]) == round(int(row["frame"]) / 10, 3)
        assert abs(sum(float(row[c]) for c in list(row)[9:]) - 1) < 1e-3

    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 35
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 240)
    assert cap.get(cv2.CAP_PROP_FPS) == 10


def test_csv_alone(tmp_path, clip, tiny_model_files):
    table = tmp_path / "faces.csv"
    assert cli.main(["--source", str(clip), "--csv", str(table), *model_args(tiny_model_files)]) == 0
    assert table.read_text().startswith("frame,time_s,face_id,x,y,w,h,label,confidence,angry")
    assert [p.name for p in tmp_path.iterdir()] == ["faces.csv"]


def test_unreadable_input_writes_nothing(tmp_path, tiny_model_files, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 5000)
    out, table = tmp_path / "out.mp4", tmp_path / "out.csv"
    code = cli.main(["--source", str(junk), "--output", str(out), "--csv", str(table),
                      *model_args(tiny_model_files)])
    assert code == 2
    assert "junk.mp4 cannot be decoded" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.mp4"]


def test_offline_mode_needs_a_file(tiny_model_files, capsys):
    assert cli.main(["--source", "0", "--csv", "x.csv", *model_args(tiny_model_files)]) == 2
    assert "video file" in capsys.readouterr().err
