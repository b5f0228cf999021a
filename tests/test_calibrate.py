import json
import math

import numpy as np
import pytest

from train.calibrate import fit_temperature, golden_section_minimum
from train.scoring import expected_calibration_error, nll


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.62, 0.38], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 0])  # right, wrong, right, wrong
    # 15 bins of width 1/15: 0.9 and 0.9 fall in (13/15, 14/15]: accuracy 0.5, confidence 0.9;
    # 0.62 in (9/15, 10/15]: accuracy 1; 0.55 in (8/15, 9/15]: accuracy 0.
    expected = 2 / 4 * 0.4 + 1 / 4 * (1 - 0.62) + 1 / 4 * 0.55  # 0.4325
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4325)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0


def test_nll_by_hand():
    assert nll(np.array([[0.5, 0.5], [0.25, 0.75]]), np.array([0, 1])) == pytest.approx(
        -(math.log(0.5) + math.log(0.75)) / 2)


def test_golden_section_finds_a_parabola_minimum():
    assert golden_section_minimum(lambda x: (x - 2.0) ** 2, -5, 10) == pytest.approx(2.0, abs=1e-5)


def test_fit_temperature_by_hand():
    # Every face says 0.9 / 0.1, but class 0 is right for 3 of 4: the best tempered probability is
    # 0.75, i.e. 9^(1/T) / (9^(1/T) + 1) = 3/4, 9^(1/T) = 3, T = ln 9 / ln 3 = 2.
    probs = np.tile([0.9, 0.1], (8, 1))
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 1])
    assert fit_temperature(probs, labels) == pytest.approx(2.0, abs=1e-3)


def test_calibrate_writes_the_temperature(tmp_path, capsys):
    from fer_server.model.files import load_model, save_model
    from train.calibrate import main
    from train.model import build_model

    model = build_model(7, width=4)
    save_model(model, tmp_path / "model.json", tmp_path / "model_weights.h5")
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"] + [f"{rng.integers(7)},{' '.join(map(str, rng.integers(0, 256, 2304)))},PublicTest"
                                      for _ in range(20)]
    (tmp_path / "fer.csv").write_text("\n".join(rows) + "\n")
    main(["--data", str(tmp_path / "fer.csv"), "--model", str(tmp_path / "model.json"), "--backend", "tf.function",
          "--write", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 20 and result["after"]["nll"] <= result["before"]["nll"] + 1e-4
    assert result["after"]["accuracy"] == result["before"]["accuracy"]
    _, info = load_model(tmp_path / "model.json")
    assert info.temperature == pytest.approx(result["temperature"], abs=1e-4)


@pytest.mark.parametrize("argv, words", [
    (["--split", "PrivateTest"], "PrivateTest is the withheld acceptance split"),
    (["--split", "PrivateTest", "--write"], "PrivateTest is the withheld acceptance split"),
    (["--split", "Training", "--write"], "fitted on PublicTest only"),
])
def test_calibrate_fits_nothing_on_privatetest(tmp_path, capsys, argv, words):
    """Refused before any file is read: the CSV and model named here do not exist."""
    from train.calibrate import main

    with pytest.raises(SystemExit) as info:
        main(["--data", str(tmp_path / "absent.csv"), "--model", str(tmp_path / "absent.json"), *argv])
    assert info.value.code == 2
    assert words in capsys.readouterr().err


def test_calibrate_never_reads_privatetest_rows(tmp_path, capsys, monkeypatch):
    """A CSV with PrivateTest rows: the report covers PublicTest alone."""
    from fer_server.model.files import save_model
    from train import calibrate
    from train.model import build_model

    save_model(build_model(7, width=4), tmp_path / "model.json", tmp_path / "model_weights.h5")
    rng = np.random.default_rng(0)
    rows = ["emotion,pixels,Usage"] + [f"{rng.integers(7)},{' '.join(map(str, rng.integers(0, 256, 2304)))},{usage}"
                                      for usage in ["PublicTest"] * 10 + ["PrivateTest"] * 6]
    (tmp_path / "fer.csv").write_text("\n".join(rows) + "\n")
    seen = []
    real_predict = calibrate.predict
    monkeypatch.setattr(calibrate, "predict", lambda classifier, images: seen.append(len(images)) or
                        real_predict(classifier, images))
    calibrate.main(["--data", str(tmp_path / "fer.csv"), "--model", str(tmp_path / "model.json"),
                    "--backend", "tf.function", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen == [10] and result["n"] == 10 and "held_out" not in result
