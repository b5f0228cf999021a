"""train.import_weights: weights exported by train.torch_gpu become served Keras models.

The expected probabilities come from a NumPy forward pass written here from
the architecture's definition (3x3 'same' convolutions, batch normalisation
with Keras's epsilon, ReLU, 2x2 max pooling, global average pooling, dense,
softmax), not from Keras.
"""
import json

import numpy as np
import pytest

from fer_server.model.files import load_model
from tests.test_train import fer_csv


def random_export(width, seed):
    """``{keras layer name: [arrays]}`` for ``train.model.build_model(width=width)``, He-scaled."""
    rng = np.random.default_rng(seed)
    weights, cin = {}, 1
    for block, filters in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
        for conv in (1, 2):
            weights[f"block{block}_conv{conv}"] = [
                rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, filters)).astype(np.float32)]
            weights[f"block{block}_bn{conv}"] = [
                rng.uniform(0.5, 1.5, filters).astype(np.float32), rng.normal(0, 0.1, filters).astype(np.float32),
                rng.normal(0, 0.1, filters).astype(np.float32), rng.uniform(0.5, 2.0, filters).astype(np.float32)]
            cin = filters
    weights["predictions"] = [rng.normal(0, 0.5, (cin, 7)).astype(np.float32),
                              rng.normal(0, 0.1, 7).astype(np.float32)]
    return weights


def reference_logits(weights, faces, border=0):
    """NumPy forward pass: ``faces`` ``(N, 48, 48)`` uint8 -> logits ``(N, 7)`` float64."""
    x = faces[..., None].astype(np.float64) / 255
    if border:
        x = x[:, border:-border, border:-border]
    for block in range(1, 5):
        for conv in (1, 2):
            kernel = weights[f"block{block}_conv{conv}"][0].astype(np.float64)
            n, h, w, _ = x.shape
            padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            x = sum(padded[:, i:i + h, j:j + w] @ kernel[i, j] for i in range(3) for j in range(3))
            gamma, beta, mean, var = weights[f"block{block}_bn{conv}"]
            x = np.maximum((x - mean) / np.sqrt(var + 1e-3) * gamma + beta, 0)
        n, h, w, c = x.shape
        x = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    kernel, bias = weights["predictions"]
    return x.mean(axis=(1, 2)) @ kernel + bias


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def write_export(path, weights, width, check_logits):
    arrays = {f"{layer}__{i}": a for layer, values in weights.items() for i, a in enumerate(values)}
    np.savez(path, meta=np.array(json.dumps({"width": width, "epochs": 3})), check_logits=check_logits,
             **arrays)
    return path


@pytest.fixture
def data(tmp_path, faces):
    path = tmp_path / "fer2013.csv"
    path.write_text(fer_csv(faces, copies=2))
    public = np.stack([face for _ in range(2) for face in faces.values()])
    return path, public


def test_one_export_becomes_the_model_numpy_computes(tmp_path, data):
    from train.import_weights import main

    csv_path, public = data
    weights = random_export(4, seed=1)
    export = write_export(tmp_path / "a.npz", weights, 4, reference_logits(weights, public))
    assert main([str(export), "--data", str(csv_path), "--out", str(tmp_path / "m")]) == 0

    model, info = load_model(tmp_path / "m" / "model.json", tmp_path / "m" / "model_weights.h5")
    got = model.predict(public[..., None].astype(np.float32) / 255, verbose=0)
    np.testing.assert_allclose(got, softmax(reference_logits(weights, public)), atol=1e-4)
    assert info.labels[0] == "Angry" and info.labels[-1] == "Neutral"


def test_an_ensemble_averages_its_members_each_on_its_crop(tmp_path, data):
    from train.import_weights import main

    csv_path, public = data
    a, b = random_export(4, seed=2), random_export(8, seed=3)
    export_a = write_export(tmp_path / "a.npz", a, 4, reference_logits(a, public))
    export_b = write_export(tmp_path / "b.npz", b, 8, reference_logits(b, public))
    assert main([str(export_a), f"{export_b}@4", "--data", str(csv_path), "--out", str(tmp_path / "m")]) == 0

    model, _ = load_model(tmp_path / "m" / "model.json", tmp_path / "m" / "model_weights.h5")
    got = model.predict(public[..., None].astype(np.float32) / 255, verbose=0)
    expected = (softmax(reference_logits(a, public)) + softmax(reference_logits(b, public, border=4))) / 2
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_one_export_with_a_border_sees_only_the_centre(tmp_path, data):
    from train.import_weights import main

    csv_path, public = data
    weights = random_export(4, seed=5)
    export = write_export(tmp_path / "a.npz", weights, 4, reference_logits(weights, public))
    assert main([f"{export}@4", "--data", str(csv_path), "--out", str(tmp_path / "m")]) == 0

    model, _ = load_model(tmp_path / "m" / "model.json", tmp_path / "m" / "model_weights.h5")
    got = model.predict(public[..., None].astype(np.float32) / 255, verbose=0)
    np.testing.assert_allclose(got, softmax(reference_logits(weights, public, border=4)), atol=1e-4)


def test_an_export_keras_disagrees_with_is_refused(tmp_path, data, capsys):
    from train.import_weights import main

    csv_path, public = data
    weights = random_export(4, seed=4)
    wrong = reference_logits(weights, public)[:, ::-1]  # classes reversed: not what these weights compute
    export = write_export(tmp_path / "a.npz", weights, 4, np.ascontiguousarray(wrong))
    assert main([str(export), "--data", str(csv_path), "--out", str(tmp_path / "m")]) == 2
    assert "differ" in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.json").exists()


def test_an_export_checked_on_other_faces_is_refused(tmp_path, data, faces, capsys):
    from train.import_weights import main

    _, public = data  # 14 PublicTest faces; the --data file below has 7
    weights = random_export(4, seed=6)
    export = write_export(tmp_path / "a.npz", weights, 4, reference_logits(weights, public))
    other = tmp_path / "other.csv"
    other.write_text(fer_csv(faces, copies=1))
    assert main([str(export), "--data", str(other), "--out", str(tmp_path / "m")]) == 2
    assert "checked on 14 PublicTest faces" in capsys.readouterr().err


@pytest.mark.parametrize("spec, words", [("a.npz@x", "whole number of pixels"), ("a.npz@30", "0-23 pixels")])
def test_a_bad_border_is_a_usage_error(tmp_path, data, spec, words, capsys):
    from train.import_weights import main

    with pytest.raises(SystemExit) as exit_info:
        main([spec, "--data", str(data[0]), "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"{spec}: " in (err := capsys.readouterr().err) and words in err


def test_a_file_that_is_not_an_export_is_refused(tmp_path, data, capsys):
    from train.import_weights import main

    (tmp_path / "x.npz").write_bytes(b"not a zip")
    assert main([str(tmp_path / "x.npz"), "--data", str(data[0]), "--out", str(tmp_path / "m")]) == 2
    assert "not a train.torch_gpu export" in capsys.readouterr().err


def test_member_weights_weigh_the_members_probabilities(tmp_path, data):
    from train.import_weights import main

    csv_path, public = data
    a, b = random_export(4, seed=7), random_export(8, seed=8)
    export_a = write_export(tmp_path / "a.npz", a, 4, reference_logits(a, public))
    export_b = write_export(tmp_path / "b.npz", b, 8, reference_logits(b, public))
    assert main([str(export_a), f"{export_b}@4", "--member-weights", "1,3",
                 "--data", str(csv_path), "--out", str(tmp_path / "m")]) == 0

    model, _ = load_model(tmp_path / "m" / "model.json", tmp_path / "m" / "model_weights.h5")
    got = model.predict(public[..., None].astype(np.float32) / 255, verbose=0)
    expected = 0.25 * softmax(reference_logits(a, public)) + 0.75 * softmax(reference_logits(b, public, border=4))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_weight_search_keeps_the_most_accurate_weighting():
    """Two faces, both class 0.  With weight w on member A: face 0 is right when 0.8 w > 0.5
    (w > 0.625), face 1 when 0.9 - 0.5 w > 0.5 (w < 0.8).  On the 0.05 grid 0.65, 0.7 and 0.75
    get both right; the tie goes to 0.65, nearest the plain mean, which gets only face 1."""
    from train.import_weights import search_weights

    a = [[0.8, 0.2], [0.4, 0.6]]
    b = [[0.0, 1.0], [0.9, 0.1]]
    votes = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)  # face 0: FER+ says class 1; face 1: no votes
    best, table = search_weights(np.array([a, b]), np.array([0, 0]), votes=votes)
    np.testing.assert_allclose(best, [0.65, 0.35])
    rows = {tuple(row["weights"]): row for row in table}
    assert len(rows) == 19
    assert rows[(0.65, 0.35)]["accuracy"] == 1.0 and rows[(0.65, 0.35)]["ferplus"] == 0.0
    assert rows[(0.5, 0.5)]["accuracy"] == 0.5 and rows[(0.5, 0.5)]["ferplus"] == 1.0
    assert rows[(0.85, 0.15)]["accuracy"] == 0.5


def test_the_weight_grid_shares_out_whole_steps():
    from train.import_weights import weight_grid

    np.testing.assert_allclose(sorted(map(tuple, weight_grid(3, step=0.25))),
                               [(0.25, 0.25, 0.5), (0.25, 0.5, 0.25), (0.5, 0.25, 0.25)])


@pytest.mark.parametrize("extra, words", [
    (["--member-weights", "1,2,3"], "3 weights for 2 exports"),
    (["--member-weights", "1,-1"], "every weight must be above 0"),
    (["--member-weights", "a,b"], "numbers separated by commas"),
])
def test_bad_member_weights_are_a_usage_error(tmp_path, data, extra, words, capsys):
    from train.import_weights import main

    with pytest.raises(SystemExit) as exit_info:
        main(["a.npz", "b.npz", "--data", str(data[0]), "--out", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_member_weights_need_two_exports(tmp_path, data, capsys):
    from train.import_weights import main

    with pytest.raises(SystemExit):
        main(["a.npz", "--member-weights", "1", "--data", str(data[0]), "--out", str(tmp_path)])
    assert "two or more exports" in capsys.readouterr().err
