import numpy as np
import pytest

from train.evaluate import metrics


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
