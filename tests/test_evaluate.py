import numpy as np
import pytest

from train.scoring import metrics


def test_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    r = metrics(y_true, y_pred, ["a", "b", "c"])
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert r["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["per_class"]["b"]["precision"] == pytest.approx(0.6667, abs=1e-4)
    assert r["per_class"]["c"]["recall"] == 0.5 and r["per_class"]["c"]["precision"] == 1.0
    f1_b, f1_c = 2 * (2 / 3) / (2 / 3 + 1), 2 * 0.5 / 1.5
    assert r["macro_f1"] == pytest.approx((0.5 + f1_b + f1_c) / 3)


def test_metrics_class_never_predicted_scores_zero():
    r = metrics(np.array([0, 1]), np.array([0, 0]), ["a", "b"])
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


# --- labelled image folders (train/folders.py) and padded face search -------------------------

import json  # noqa: E402

import cv2  # noqa: E402

from train.data import DataError  # noqa: E402
from train.folders import load_folder, load_manifest, main as folders_main, score, wants_folders  # noqa: E402

LABELS = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")


def _photo(face, side=144):
    """The face enlarged to ``side`` pixels in the middle of a grey canvas twice as wide (a whole photo)."""
    canvas = np.full((2 * side, 2 * side), 128, np.uint8)
    canvas[side // 2:side // 2 + side, side // 2:side // 2 + side] = cv2.resize(
        face, (side, side), interpolation=cv2.INTER_CUBIC)
    return canvas


def _crop(face, side=144):
    """The face enlarged to ``side`` pixels, nothing around it (a tight crop touching every border)."""
    return cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)


def test_score_by_hand():
    # 4 images of classes 0, 0, 1, 2 (of 3); the last has no face found
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0, 0, 0]], np.float32)
    r = score(probs, np.array([0, 0, 1, 2]), np.array([True, True, True, False]), ["a", "b", "c"])
    assert r["n"] == 4 and r["found"] == 3
    assert r["accuracy"] == pytest.approx(2 / 4) and r["accuracy_found"] == pytest.approx(2 / 3)
    # F1: a = 2*1*0.5/1.5 = 2/3, b = 2*0.5*1/1.5 = 2/3, c = 0 (its only image had no face)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert r["macro_f1_found"] == pytest.approx((2 / 3 + 2 / 3) / 3)  # c has no support among the found
    assert r["distribution"]["b"] == {"true": 1, "predicted": 2}
    assert r["distribution"]["(no face)"] == {"true": 0, "predicted": 1}
    assert r["confusion"][2] == [0, 0, 0, 1]


def test_score_calibration_by_hand():
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0, 0, 0]], np.float32)
    y, found = np.array([0, 0, 1, 2]), np.array([True, True, True, False])
    # found faces: confidence 0.9 right, 0.7 wrong, 0.8 right, each alone in its bin
    r = score(probs, y, found, ["a", "b", "c"], temperature=2.0)
    assert r["ece"] == pytest.approx((0.1 + 0.7 + 0.2) / 3, abs=1e-6)
    assert r["mean_confidence"] == pytest.approx(0.8, abs=1e-6)
    # T=2 undone: rows become p^2 / sum p^2: 0.81/0.82 right, 0.49/0.54 wrong, 0.64/0.66 right;
    # the two right ones share the bin (14/15, 1], the wrong one is alone in (13/15, 14/15]
    right = (0.81 / 0.82 + 0.64 / 0.66) / 2
    assert r["ece_untempered"] == pytest.approx(2 / 3 * (1 - right) + 1 / 3 * (0.49 / 0.54), abs=1e-5)
    assert "ece" not in score(probs, y, found, ["a", "b", "c"])


def test_load_folder_and_manifest(tmp_path):
    for label, name in (("Happy", "a.png"), ("sad", "b.jpg"), ("Sad", "notes.txt")):
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / name).write_bytes(b"x")
    items = load_folder(tmp_path, LABELS)
    assert sorted((p.name, i) for p, i in items) == [("a.png", 3), ("b.jpg", 4)]
    (tmp_path / "list.csv").write_text("set,label,relpath\nx,Happy,Happy/a.png\nx,Fear,gone.png\n")
    assert [(p.name, i) for p, i in load_manifest(tmp_path / "list.csv", LABELS)] == [("a.png", 3), ("gone.png", 2)]
    assert wants_folders(["--data", str(tmp_path)]) and wants_folders(["--manifest", "x.csv"])
    assert not wants_folders(["--data", str(tmp_path / "list.csv")])


@pytest.mark.parametrize("layout, message", [
    (None, "no such folder"), ({}, "no images"), ({"Contempt": 1}, "'Contempt' is not one the model knows")])
def test_bad_folder_is_one_clear_error(tmp_path, tiny_model_files, capsys, layout, message):
    root = tmp_path / "data"
    if layout is not None:
        root.mkdir()
        for label in layout:
            (root / label).mkdir()
            cv2.imwrite(str(root / label / "x.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(SystemExit) as e:
        folders_main(["--data", str(root), "--model", str(tiny_model_files[0]), "--weights", str(tiny_model_files[1])])
    assert message in str(e.value) and str(e.value).startswith("error: ")


def test_manifest_with_unknown_label_names_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("label,relpath\nHappy,a.png\nBored,b.png\n")
    with pytest.raises(DataError, match="line 3: class 'Bored'"):
        load_manifest(tmp_path / "m.csv", LABELS)


def test_folder_evaluation_photo_crop_and_broken_image(tmp_path, tiny_model_files, faces, capsys):
    root = tmp_path / "data"
    for label in ("Happy", "Angry"):
        (root / label).mkdir(parents=True)
    cv2.imwrite(str(root / "Happy" / "photo.png"), _photo(faces["Happy"]))
    cv2.imwrite(str(root / "Angry" / "crop.png"), _crop(faces["Angry"]))
    (root / "Angry" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    model = ["--model", str(tiny_model_files[0]), "--weights", str(tiny_model_files[1])]
    png = tmp_path / "cm.png"

    def run(*extra):
        from train.evaluate import main  # the dispatch from train.evaluate is part of what is tested
        main(["--data", str(root), "--json", "--confusion-png", str(png), *model, *extra])
        out = capsys.readouterr().out
        return json.loads(out.strip().splitlines()[-1]), out

    plain, out = run("--image-pad", "0", "--predictions", str(tmp_path / "plain.csv"))
    assert "unreadable: " in out and "broken.jpg" in out
    assert plain["n"] == 2 and plain["unreadable"] == 1 and plain["unreadable_files"][0].endswith("broken.jpg")
    assert plain["found"] == 1  # the photo's face, not the crop's: it touches the border
    assert plain["distribution"]["(no face)"]["predicted"] == 1
    # two labelled images, one face found: the crop without a face counts wrong, so accuracy is half of
    # whether the photo's face got its label
    photo_row = next(r for r in (tmp_path / "plain.csv").read_text().splitlines() if "photo.png" in r)
    assert plain["accuracy"] == 0.5 * (photo_row.split(",")[2] == "Happy") and png.is_file()
    padded, _ = run("--image-pad", "0.2")
    assert padded["found"] == 2
    crops, _ = run("--crops", "--predictions", str(tmp_path / "p.csv"))
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "path,true,predicted,confidence" and len(rows) == 3
    assert sorted(r.split(",")[1] for r in rows[1:]) == ["Angry", "Happy"]
    assert crops["found"] == 2 and crops["mode"] == "crops"
    assert sum(d["true"] for d in crops["distribution"].values()) == 2


def test_padding_finds_a_face_that_touches_the_border(faces, classifier):
    from fer_server.vision.detector import FaceDetector
    from fer_server.vision.pipeline import FramePipeline

    crop = _crop(faces["Angry"])
    detector = FaceDetector(1.1, 5, 24, 1280)  # Config's image_* settings
    assert len(detector.detect(crop)) == 0
    assert len(detector.detect_padded(crop, 0.0)) == 0
    boxes = detector.detect_padded(crop, 0.2)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert w > 144 / 2 and abs(x + w / 2 - 72) < 36 and abs(y + h / 2 - 72) < 36  # the face, not a corner
    assert len(FramePipeline(detector, classifier).faces_in_image(crop)) == 0
    found = FramePipeline(detector, classifier, image_pad=0.2).faces_in_image(crop)
    assert len(found) == 1
    fx, fy, fw, fh = found[0].box
    assert fx >= 0 and fy >= 0 and fx + fw <= 144 and fy + fh <= 144  # clipped to the image


def test_clip_boxes_by_hand():
    from fer_server.vision.detector import clip_boxes

    out = clip_boxes(np.array([[-5, 10, 20, 20], [90, 90, 20, 20], [200, 0, 5, 5]]), (100, 100))
    assert out.tolist() == [[0, 10, 15, 20], [90, 90, 10, 10], [100, 0, 0, 5]]


def test_logit_adjustment_by_hand():
    from train.logit_adjust import class_priors, logit_adjust

    priors = class_priors(np.array([0, 0, 0, 0, 1]), 2)
    assert priors.tolist() == [0.8, 0.2]
    scores = logit_adjust(np.array([[0.6, 0.4]]), priors, 1.0)
    assert scores[0] == pytest.approx([np.log(0.6 / 0.8), np.log(0.4 / 0.2)])  # 0.75 < 2: the rare class wins
    assert logit_adjust(np.array([[0.6, 0.4]]), priors, 0.0).argmax() == 0
    with pytest.raises(ValueError, match="no example"):
        class_priors(np.array([0, 0]), 2)


def spy_detector(detect_width):
    """A ``FaceDetector`` that keeps ``(shape, scale)`` of its last ``detect`` call as ``seen``."""
    from fer_server.vision.detector import FaceDetector

    class Spy(FaceDetector):
        def detect(self, gray, min_px=None, max_px=None, scale=None, min_neighbors=None):
            self.seen = (gray.shape, scale)
            return super().detect(gray, min_px, max_px, scale, min_neighbors)

    return Spy(detect_width=detect_width)


def test_padding_keeps_the_downscale_of_the_unpadded_image():
    spy = spy_detector(400)
    spy.detect_padded(np.zeros((300, 400), np.uint8), 0.25)
    assert spy.seen == ((450, 550), 1.0)  # a 75-pixel border (0.25 of the shorter side), full resolution
    spy.detect_padded(np.zeros((300, 800), np.uint8), 0.25)
    assert spy.seen == ((450, 950), 0.5)  # as the 800-wide image alone would be: 400 / 800


def test_a_small_crop_is_found_when_enlarged_for_the_search(faces, classifier):
    from fer_server.vision.detector import FaceDetector
    from fer_server.vision.pipeline import FramePipeline

    crop = faces["Angry"]  # the 48x48 FER2013 face itself, as uploaded
    detector = FaceDetector(1.1, 5, 24, 1280)  # Config's image_* settings
    assert len(detector.detect_padded(crop, 0.3)) == 0
    boxes = detector.detect_padded(crop, 0.3, min_side_px=144)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]  # in pixels of the 48x48 image, not of the enlarged one
    assert 24 < w < 72 and abs(x + w / 2 - 24) < 12 and abs(y + h / 2 - 24) < 12
    found = FramePipeline(detector, classifier, image_pad=0.3, image_min_side_px=144).faces_in_image(crop)
    assert len(found) == 1
    fx, fy, fw, fh = found[0].box
    assert fx >= 0 and fy >= 0 and fx + fw <= 48 and fy + fh <= 48


def test_enlarging_for_the_search_scales_the_image_then_pads_it():
    spy = spy_detector(1280)
    spy.detect_padded(np.zeros((50, 100), np.uint8), 0.25, min_side_px=100)
    assert spy.seen == ((150, 250), 1.0)  # 100x200 after doubling, then a 25-pixel border
    spy.detect_padded(np.zeros((150, 100), np.uint8), 0.0, min_side_px=100)
    assert spy.seen == ((150, 100), 1.0)  # already large enough: untouched
    with pytest.raises(ValueError, match="min_side_px"):
        spy.detect_padded(np.zeros((10, 10), np.uint8), 0.0, min_side_px=-1)


def test_a_long_strip_is_enlarged_and_padded_within_bounds():
    spy = spy_detector(1280)
    spy.detect_padded(np.zeros((40, 200), np.uint8), 0.0, min_side_px=144)
    assert spy.seen == ((115, 576), 1.0)  # x2.88, not x3.6: the longer side stops at 4 x 144 = 576
    spy.detect_padded(np.zeros((10, 1000), np.uint8), 0.3, min_side_px=144)
    assert spy.seen == ((16, 1006), 1.0)  # already longer than 576: not enlarged; border 0.3 x 10 = 3
    spy.detect_padded(np.zeros((3482, 1), np.uint8), 0.3, min_side_px=144)
    assert spy.seen == ((3482, 1), 1.0)  # was 802,252 x 300,988 pixels, enlarged then padded: 241 GB
