"""Data loaders, a 1-epoch training of a tiny model, evaluation: no real training here."""
import gzip
import json

import cv2
import h5py
import numpy as np
import pytest

from fer_server.model.files import FER2013_LABELS, load_model
from train.data import DataError, carve_validation, load_dataset, load_fer2013_csv, split_sources


def fer_csv(faces, copies=4, usages=("Training", "PublicTest")):
    """CSV text in the Kaggle layout: every fixture face ``copies`` times per split."""
    lines = ["emotion,pixels,Usage"]
    for usage in usages:
        for _ in range(copies):
            for name, face in faces.items():
                lines.append(f"{FER2013_LABELS.index(name)},{' '.join(map(str, face.ravel()))},{usage}")
    return "\n".join(lines) + "\n"


def constant_model(probabilities, width=4):
    """A ``train.model`` network that outputs ``probabilities`` (length 7) for every face: the final
    layer's kernel is zero and its bias ``log(probabilities)``, so its softmax gives them back."""
    from train.model import build_model

    model = build_model(7, width=width)
    head = model.get_layer("predictions")
    head.kernel.assign(np.zeros(head.kernel.shape, np.float32))
    head.bias.assign(np.log(np.asarray(probabilities, np.float32)))
    return model


@pytest.fixture
def csv_path(tmp_path, faces):
    path = tmp_path / "fer2013.csv"
    path.write_text(fer_csv(faces))
    return path


@pytest.fixture
def folder_path(tmp_path, faces):
    root = tmp_path / "kaggle"
    for split in ("train", "test"):
        for name, face in faces.items():
            (root / split / name.lower()).mkdir(parents=True)
            cv2.imwrite(str(root / split / name.lower() / "a.png"), face)
            cv2.imwrite(str(root / split / name.lower() / "b.jpg"), cv2.resize(face, (96, 96)))
    return root


def test_csv_plain_and_gzip(tmp_path, csv_path, faces):
    gz = tmp_path / "fer2013.csv.gz"
    gz.write_bytes(gzip.compress(csv_path.read_bytes()))
    for path in (csv_path, gz):
        data = load_fer2013_csv(path)
        images, labels = data["Training"]
        assert images.shape == (28, 48, 48) and images.dtype == np.uint8
        assert sorted(set(labels)) == list(range(7))
        np.testing.assert_array_equal(images[0], faces[FER2013_LABELS[labels[0]]])


def test_image_folders(folder_path, caplog):
    # 2 images per class in train/: the 10% carve takes max(1, round(0.2)) = 1 of each for selection;
    # the 14 images of test/ are read for nothing
    data, labels = load_dataset(folder_path, FER2013_LABELS)
    assert labels == FER2013_LABELS and set(data) == {"Training", "Validation"}
    assert data["Training"][0].shape == (7, 48, 48) and data["Training"][0].dtype == np.uint8
    assert data["Validation"][0].shape == (7, 48, 48)
    assert sorted(data["Training"][1]) == list(range(7)) and sorted(data["Validation"][1]) == list(range(7))
    assert "test: not used for selection" in caplog.text


def grey_folders(root, counts, labels=("Angry", "Happy", "Sad")):
    """``root/<class>/NN.png`` for ``{class: n}``: image NN of class c (its index in ``labels``) is flat
    grey ``50 * c + NN``."""
    for name, n in counts.items():
        c = labels.index(name)
        (root / name.lower()).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / name.lower() / f"{i:02d}.png"), np.full((48, 48), 50 * c + i, np.uint8))
    return root


def test_validation_is_carved_from_train_stratified_and_seeded(tmp_path, caplog):
    labels = ("Angry", "Happy", "Sad")
    grey_folders(tmp_path / "train", {"Angry": 10, "Happy": 20, "Sad": 5})
    grey_folders(tmp_path / "test", {"Angry": 3, "Happy": 3, "Sad": 3})  # Kaggle's: never selected on
    data, _ = load_dataset(tmp_path, labels)
    (x_train, y_train), (x_val, y_val) = data["Training"], data["Validation"]
    # 10% of 10, 20, 5 is 1, 2 and round(0.5) = 0, raised to 1: 4 for selection, 31 for training
    assert np.bincount(y_val, minlength=3).tolist() == [1, 2, 1]
    assert np.bincount(y_train, minlength=3).tolist() == [9, 18, 4]
    grey = lambda x: sorted(int(v) for v in x[:, 0, 0])  # noqa: E731 - an image's name is its grey level
    everything = list(range(0, 10)) + list(range(50, 70)) + list(range(100, 105))
    assert sorted(grey(x_train) + grey(x_val)) == everything  # each image in exactly one split
    for x, y in ((x_train, y_train), (x_val, y_val)):  # with its own label
        assert (x[:, 0, 0] // 50 == y).all()
    assert "not used for selection" in caplog.text
    again, _ = load_dataset(tmp_path, labels)
    np.testing.assert_array_equal(again["Validation"][0], x_val)  # the same seed, the same split
    picks = {tuple(grey(load_dataset(tmp_path, labels, seed=seed)[0]["Validation"][0])) for seed in range(5)}
    assert len(picks) > 1  # the seed decides which faces are held out
    (x_t, y_t), (x_v, y_v) = carve_validation(x_train, y_train, fraction=0.25, seed=3)
    assert np.bincount(y_v).tolist() == [2, 4, 1] and np.bincount(y_t).tolist() == [7, 14, 3]
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        carve_validation(x_train, y_train, fraction=1.0)


def test_explicit_val_folder_and_split_sources(tmp_path, csv_path):
    labels = ("Angry", "Happy", "Sad")
    grey_folders(tmp_path / "data" / "train", {"Angry": 4, "Happy": 4, "Sad": 4})
    grey_folders(tmp_path / "picked", {"Happy": 3, "Sad": 2})  # a class may be missing
    data, _ = load_dataset(tmp_path / "data", labels, val=tmp_path / "picked")
    assert len(data["Training"][1]) == 12  # all of train/
    assert data["Validation"][1].tolist() == [1, 1, 1, 2, 2]
    assert sorted(int(v) for v in data["Validation"][0][:, 0, 0]) == [50, 51, 52, 100, 101]
    with pytest.raises(DataError, match="nowhere: no such folder"):
        load_dataset(tmp_path / "data", labels, val=tmp_path / "nowhere")
    with pytest.raises(DataError, match="--val is for the image-folder layout"):
        load_dataset(csv_path, FER2013_LABELS, val=tmp_path / "picked")
    assert split_sources(csv_path) == {"Training": "the Training rows of `fer2013.csv`",
                                       "PublicTest": "the PublicTest rows of `fer2013.csv`"}
    assert split_sources(tmp_path / "data", tmp_path / "picked")["Validation"] == "the folder `picked/` (--val)"
    assert split_sources(tmp_path / "data", seed=7)["Validation"].startswith("10% of each class of `data/train/`, "
                                                                            "drawn with seed 7")


@pytest.mark.parametrize("text, words", [
    ("label,pixels,Usage\n0,1 2,Training\n", "missing column(s) emotion"),
    ("emotion,pixels,Usage\n0," + " ".join(["1"] * 2303) + ",Training\n", "line 2: 2303 pixels"),
    ("emotion,pixels,Usage\n0," + " ".join(["x"] * 2304) + ",Training\n", "line 2: non-numeric"),
    ("emotion,pixels,Usage\n9," + " ".join(["1"] * 2304) + ",Training\n", "line 2: emotion must be"),
    ("emotion,pixels,Usage\n0," + " ".join(["1"] * 2304) + ",Validation\n", "line 2: unknown Usage"),
])
def test_malformed_csv_names_file_and_line(tmp_path, text, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match="bad.csv") as e:
        load_fer2013_csv(path)
    assert words in str(e.value)



def test_ferplus_votes_become_distributions_in_fer2013_class_order(tmp_path):
    from train.data import load_ferplus_votes

    path = tmp_path / "fer2013new.csv"
    path.write_text("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
                    "Training,a.png,0,0,0,0,0,0,0,0,0,10\n"
                    "PublicTest,b.png,6,0,0,0,2,0,0,1,1,0\n"   # contempt and unknown are dropped
                    "PublicTest,c.png,0,0,0,0,0,0,0,0,10,0\n"  # no vote for the 7 classes
                    "PublicTest,d.png,0,5,0,0,0,0,5,0,0,0\n")
    votes = load_ferplus_votes(path, "PublicTest", expected=3)
    # FER2013 order: Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral
    np.testing.assert_allclose(votes, [[0.25, 0, 0, 0, 0, 0, 0.75], [0] * 7, [0, 0, 0.5, 0.5, 0, 0, 0]])
    with pytest.raises(DataError, match="1 Training rows, expected 2"):
        load_ferplus_votes(path, "Training", expected=2)

def test_missing_file_and_bad_folders(tmp_path, folder_path):
    with pytest.raises(DataError, match="nope.csv: no such file"):
        load_dataset(tmp_path / "nope.csv", FER2013_LABELS)
    for f in (folder_path / "train" / "sad").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="train/sad: no images"):
        load_dataset(folder_path, FER2013_LABELS)
    (folder_path / "train" / "sad").rmdir()
    with pytest.raises(DataError, match="no folder for class 'Sad'"):
        load_dataset(folder_path, FER2013_LABELS)


def test_class_subset(csv_path):
    data, labels = load_dataset(csv_path, FER2013_LABELS, ["happy", "Sad"])
    assert labels == ("Happy", "Sad")
    assert sorted(set(data["Training"][1])) == [0, 1] and len(data["Training"][1]) == 8
    with pytest.raises(DataError, match="unknown class name.*Contempt"):
        load_dataset(csv_path, FER2013_LABELS, ["Happy", "Contempt"])


def test_cli_bad_input_exits_nonzero(tmp_path, capsys):
    from train.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path / "missing.csv"), "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert "missing.csv: no such file" in str(e.value)


def test_two_epochs_of_a_tiny_model_serve_its_classes(tmp_path, folder_path, make_app, clip, capsys):
    from fer_server.config import Config
    from train.__main__ import main

    from train.card import NOTES_MARKER

    out = tmp_path / "model"
    out.mkdir()
    (out / "MODEL_CARD.md").write_text(f"old card\n{NOTES_MARKER}\nwhat we tried\n")
    main(["--data", str(folder_path), "--out", str(out), "--epochs", "2", "--batch-size", "8",
          "--width", "4", "--classes", "Angry,Happy,Sad,Neutral", "--average-last", "2",
          "--checkpoint-dir", str(tmp_path / "ckpt"), "--precision", "float32"])
    for name in ("model.json", "model_weights.h5", "MODEL_CARD.md", "training_history.csv"):
        assert (out / name).exists(), name
    model, info = load_model(out / "model.json", out / "model_weights.h5")
    assert info.labels == ("Angry", "Happy", "Sad", "Neutral") and model.output_shape == (None, 4)
    with h5py.File(out / "model_weights.h5") as f:  # classic layout, float32
        assert "layer_names" in f.attrs and f["block1_conv1"]["block1_conv1/kernel:0"].dtype == np.float32
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Validation results" in card and "PublicTest results" not in card and "old card" not in card
    # 2 faces of each of the 4 classes in train/: 1 each trains, 1 each selects; test/ is not used
    assert "Training: 4 faces" in capsys.readouterr().out
    assert ("selected on Validation (4 faces): 10% of each class of `kaggle/train/`, drawn with seed 1" in card)
    assert "--val-fraction 0.1 --seed 1" in card
    assert len(list((tmp_path / "ckpt/epochs").glob("*.weights.h5"))) == 2
    assert "2 epochs, 1 to 2" in card  # the mean weights were tried, and the card says which won
    assert card.endswith(f"{NOTES_MARKER}\nwhat we tried\n")  # hand-written notes kept

    client = make_app(Config(source=str(clip), model_path=out / "model.json",
                             weights_path=out / "model_weights.h5")).test_client()
    face = cv2.imencode(".png", cv2.resize(cv2.imread(str(folder_path / "train/happy/a.png")), (200, 200)))[1]
    page = client.get("/").get_data(as_text=True)
    assert '["Angry", "Happy", "Sad", "Neutral"]' in page
    r = client.post("/api/predict", data=face.tobytes(), content_type="image/png").get_json()
    assert len(r["faces"]) == 1  # the Happy fixture face, enlarged to 200 px, is found
    assert list(r["faces"][0]["probabilities"]) == ["Angry", "Happy", "Sad", "Neutral"]
    assert r["faces"][0]["label"] in ("Angry", "Happy", "Sad", "Neutral")


def test_evaluate_json(tmp_path, csv_path, capsys):
    from fer_server.model.files import save_model
    from train.evaluate import main

    # A model that answers Happy (index 3) for every face, on 4 faces of each of the 7 classes: accuracy
    # 4/28 = 1/7; Happy has precision 1/7, recall 1, F1 2 * (1/7) / (1/7 + 1) = 1/4, the others 0;
    # macro-F1 (1/4) / 7; every row of the confusion matrix puts its 4 faces in the Happy column.
    save_model(constant_model([0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1]), tmp_path / "m.json", tmp_path / "w.h5")
    main(["--data", str(csv_path), "--split", "PublicTest", "--model", str(tmp_path / "m.json"),
          "--weights", str(tmp_path / "w.h5"), "--json", "--tta",
          "--confusion-png", str(tmp_path / "cm.png")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["n"] == 28
    assert result["accuracy"] == pytest.approx(1 / 7) and result["macro_f1"] == pytest.approx(0.25 / 7)
    assert result["per_class"]["Happy"] == pytest.approx({"precision": 1 / 7, "recall": 1, "f1": 0.25, "support": 4},
                                                         abs=1e-4)
    assert result["per_class"]["Sad"] == {"precision": 0, "recall": 0, "f1": 0, "support": 4}
    assert set(result["per_class"]) == set(FER2013_LABELS)
    assert result["confusion"] == [[0, 0, 0, 4, 0, 0, 0]] * 7
    assert (tmp_path / "cm.png").stat().st_size > 1000


def test_weight_averaging_and_batchnorm_recalibration(tmp_path):
    import keras

    from train.average import average_weights, recalibrate_batchnorm

    def net():
        inputs = keras.Input((4, 4, 1))
        return keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Dense(2)(inputs)))

    a, b = net(), net()
    b.set_weights([w + 1.0 for w in a.get_weights()])
    a.save_weights(str(tmp_path / "a.weights.h5"))
    b.save_weights(str(tmp_path / "b.weights.h5"))
    mean = net()
    average_weights(mean, [tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"])
    for wm, wa in zip(mean.weights, a.weights):
        np.testing.assert_allclose(wm.numpy(), wa.numpy() + 0.5, rtol=1e-6, atol=1e-6)  # a + 0.5 may be near 0

    images = np.random.default_rng(0).random((96, 4, 4, 1), dtype=np.float32)
    features = mean.layers[1](images).numpy().reshape(-1, 2)
    bn = mean.layers[2]
    recalibrate_batchnorm(mean, images, batch_size=32)
    np.testing.assert_allclose(bn.moving_mean.numpy(), features.mean(0), rtol=1e-4)
    assert bn.momentum == 0.99  # restored


def test_init_weights_fine_tunes_a_given_model(tmp_path, csv_path, tiny_model_files):
    from train.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--data", str(csv_path), "--init-weights", str(tmp_path / "none.h5"),
              "--checkpoint-dir", str(tmp_path / "c0")])
    assert "none.h5: no such file" in str(e.value)

    common = ["--data", str(csv_path), "--epochs", "1", "--batch-size", "8", "--precision", "float32",
              "--init-weights", str(tiny_model_files[1])]
    with pytest.raises(SystemExit) as e:  # a width-8 model cannot take width-4 weights
        main([*common, "--width", "8", "--out", str(tmp_path / "bad"), "--checkpoint-dir", str(tmp_path / "c1")])
    assert "does not fit a width-8 model" in str(e.value) and "model_weights.h5" in str(e.value)
    assert not (tmp_path / "bad" / "model_weights.h5").exists()

    # With a learning rate of ~0 the one epoch leaves the convolutions where they started.
    main([*common, "--width", "4", "--lr", "1e-12", "--augment", "0.5", "--out", str(tmp_path / "ok"),
          "--checkpoint-dir", str(tmp_path / "c2")])
    with h5py.File(tiny_model_files[1]) as a, h5py.File(tmp_path / "ok" / "model_weights.h5") as b:
        name = "block2_conv1/block2_conv1/kernel:0"
        np.testing.assert_allclose(b[name][()], a[name][()], atol=1e-6)
    card = (tmp_path / "ok" / "MODEL_CARD.md").read_text()
    assert "rotation +-7.5 deg, shift +-5%" in card and "--augment 0.5" in card
    assert "`tflite-int8`: " in card and "server's `tflite-int8` inference path: accuracy" in card


def test_teacher_gives_soft_targets(tmp_path, csv_path, tiny_model_files, monkeypatch):
    import train.__main__ as train_main
    from fer_server.model.files import save_classic_weights
    from train.__main__ import main, make_dataset, weights_width
    from train.model import build_model

    build_model(7, width=4).save_weights(str(tmp_path / "w4.weights.h5"))  # Keras 3 layout: width not read
    save_classic_weights(build_model(7, width=6), tmp_path / "w6.h5")
    assert weights_width(tiny_model_files[1]) == 4 and weights_width(tmp_path / "w6.h5") == 6
    assert weights_width(tmp_path / "w4.weights.h5") is None

    common = ["--data", str(csv_path), "--epochs", "1", "--batch-size", "8", "--precision", "float32", "--teacher"]
    with pytest.raises(SystemExit) as e:  # taken as --width 8, which width-4 weights do not fit
        main([*common, str(tmp_path / "w4.weights.h5"), "--width", "8", "--out", str(tmp_path / "bad"),
              "--checkpoint-dir", str(tmp_path / "c1")])
    assert "does not fit a width-8 model" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main([*common, str(tmp_path / "none.h5"), "--checkpoint-dir", str(tmp_path / "c0")])
    assert "none.h5: no such file (--teacher)" in str(e.value)
    # Classic-layout teachers of other widths than the student's, each answering fixed probabilities
    # p and q for every face: the targets must be 0.7 x the label + 0.3 x (p + q) / 2.
    p, q = [0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1], [0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    save_classic_weights(constant_model(p, width=4), tmp_path / "p4.h5")
    save_classic_weights(constant_model(q, width=6), tmp_path / "q6.h5")
    seen = {}

    def spy(images, labels, *args, targets=None, **kwargs):
        if kwargs.get("augment") is not None:  # the training set, not the validation one
            seen["labels"], seen["targets"] = labels, targets
        return make_dataset(images, labels, *args, targets=targets, **kwargs)

    monkeypatch.setattr(train_main, "make_dataset", spy)
    main([*common, str(tmp_path / "p4.h5"), str(tmp_path / "q6.h5"), "--width", "8", "--soft-weight", "0.3",
          "--out", str(tmp_path / "ok"), "--checkpoint-dir", str(tmp_path / "c2")])
    # the CSV's Training rows: 4 copies of the 7 fixture faces, in file-name order angry .. surprise
    angry, happy, surprise = ([0.775, 0.03, 0.03, 0.075, 0.03, 0.03, 0.03],
                              [0.075, 0.03, 0.03, 0.775, 0.03, 0.03, 0.03],
                              [0.075, 0.03, 0.03, 0.075, 0.03, 0.73, 0.03])
    assert seen["labels"][:7].tolist() == [0, 1, 2, 3, 6, 4, 5] and seen["targets"].shape == (28, 7)
    np.testing.assert_allclose(seen["targets"][[0, 3, 6]], [angry, happy, surprise], atol=1e-5)
    np.testing.assert_allclose(seen["targets"].sum(1), 1, atol=1e-5)
    assert seen["targets"].dtype == np.float32
    card = (tmp_path / "ok" / "MODEL_CARD.md").read_text()
    assert "--teacher p4.h5 q6.h5 --soft-weight 0.3" in card and "(distillation)" in card


def test_soft_targets_mix_label_and_teacher():
    from train.__main__ import soft_targets

    teacher = np.array([[0.6, 0.4, 0.0], [0.0, 0.0, 1.0]], np.float32)
    targets = soft_targets(np.array([1, 0]), teacher, 0.5)
    np.testing.assert_allclose(targets, [[0.3, 0.7, 0.0], [0.5, 0.0, 0.5]], rtol=1e-6)
    assert targets.dtype == np.float32


def test_widening_keeps_the_function(tmp_path, tiny_model_files, faces, capsys):
    from train.model import build_model
    from train.widen import main, widen_weights

    narrow, _ = load_model(*tiny_model_files)
    x = np.stack(list(faces.values()))[..., None].astype(np.float32) / 255.0
    wide = build_model(7, width=6)
    widen_weights(narrow, wide, noise=0)
    np.testing.assert_allclose(wide(x).numpy(), narrow(x).numpy(), atol=1e-5)
    assert wide.count_params() > narrow.count_params()
    with pytest.raises(ValueError, match="fewer than"):
        widen_weights(wide, build_model(7, width=4))
    with pytest.raises(ValueError, match="same classes"):
        widen_weights(narrow, build_model(4, width=6))

    main(["--model", str(tiny_model_files[0]), "--weights", str(tiny_model_files[1]), "--width", "6",
          "--noise", "0", "--out", str(tmp_path / "wide.h5")])  # classic layout, as --init-weights takes it
    with h5py.File(tmp_path / "wide.h5") as f:
        assert f["block4_conv2/block4_conv2/kernel:0"].shape == (3, 3, 48, 48)
    again = build_model(7, width=6)
    again.load_weights(str(tmp_path / "wide.h5"))
    np.testing.assert_allclose(again(x).numpy(), narrow(x).numpy(), atol=1e-5)
    assert "parameters" in capsys.readouterr().out


def test_a_tiny_model_learns_the_fixture_faces(tmp_path, faces):
    """15 epochs on 4 copies of the 7 fixture faces, no augmentation: a width-4 network must learn them.
    An untrained one answers one class for every face: 1 of 7 right."""
    import csv

    from fer_server.model.classifier import Classifier
    from train.__main__ import main

    (tmp_path / "f.csv").write_text(fer_csv(faces, copies=4))
    out = tmp_path / "m"
    main(["--data", str(tmp_path / "f.csv"), "--out", str(out), "--epochs", "15", "--batch-size", "7",
          "--width", "4", "--augment", "0", "--lr", "0.02", "--label-smoothing", "0", "--weight-decay", "0",
          "--patience", "100", "--precision", "float32", "--checkpoint-dir", str(tmp_path / "c")])
    with open(out / "training_history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 15
    first_loss, last_loss = float(history[0]["loss"]), float(history[-1]["loss"])
    assert last_loss < 0.3 * first_loss, (first_loss, last_loss)
    assert max(float(row["accuracy"]) for row in history[-3:]) >= 0.9  # of the 28 training faces
    classifier = Classifier.from_files(out / "model.json", out / "model_weights.h5")
    x = np.stack(list(faces.values()))[..., None].astype(np.float32) / 255
    right = sum(FER2013_LABELS[i] == name for i, name in zip(classifier.predict(x).argmax(1), faces))
    assert right >= 5, right
