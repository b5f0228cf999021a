"""Distillation pieces that run without PyTorch: the loss, the camera augmentations, the prior share."""
import math

import cv2
import numpy as np
import pytest

from train import camera_augment
from train.logit_adjust import choose_prior_share
from train.losses import distillation_loss, log_prior, soften


def value(tensor):
    return float(np.asarray(tensor))


def test_soften_by_hand():
    # softmax(log([0.8, 0.2]) / 2) = [sqrt(0.8), sqrt(0.2)] / (sqrt(0.8) + sqrt(0.2)) = [2/3, 1/3]
    np.testing.assert_allclose(np.asarray(soften(np.array([[0.8, 0.2]]), 2.0)), [[2 / 3, 1 / 3]], atol=1e-6)


def test_distillation_loss_by_hand():
    logits, hard, teacher = np.zeros((1, 2), np.float32), np.array([[1.0, 0.0]]), np.array([[0.8, 0.2]])
    # hard term: -log(1/2); soft term: KL([2/3, 1/3] || [1/2, 1/2]) times T^2 = 4
    kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    expected = 0.5 * math.log(2) + 0.5 * 4 * kl
    assert value(distillation_loss(logits, hard, teacher, temperature=2.0, alpha=0.5)) == pytest.approx(expected, abs=1e-6)
    assert value(distillation_loss(logits, hard, teacher, temperature=2.0, alpha=0.0)) == pytest.approx(math.log(2), abs=1e-6)
    # alpha 1, T 1: KL([0.8, 0.2] || [0.5, 0.5])
    kl1 = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert value(distillation_loss(logits, hard, teacher, temperature=1.0, alpha=1.0)) == pytest.approx(kl1, abs=1e-6)


def test_logit_adjustment_by_hand():
    """Priors [3/4, 1/4], tau 1: the adjusted scores of zero logits are log priors, softmax [3/4, 1/4]."""
    logits, hard, teacher = np.zeros((1, 2), np.float32), np.array([[1.0, 0.0]]), np.array([[0.8, 0.2]])
    prior = np.log(np.array([0.75, 0.25], np.float32))
    # at T = 2 the student's tempered softmax is [sqrt(3), 1] / (sqrt(3) + 1)
    q = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    kl = 2 / 3 * math.log((2 / 3) / q[0]) + 1 / 3 * math.log((1 / 3) / q[1])
    expected = 0.5 * -math.log(0.75) + 0.5 * 4 * kl
    got = distillation_loss(logits, hard, teacher, temperature=2.0, alpha=0.5, prior=prior, tau=1.0)
    assert value(got) == pytest.approx(expected, abs=1e-6)
    # the loss is lowest where logits + log prior match the targets: for a one-hot rare class that
    # means a logit margin larger than without the adjustment
    rare = np.array([[0.0, 1.0]])
    assert value(distillation_loss(np.array([[0.0, 2.0]]), rare, rare, alpha=0.0, prior=prior)) > \
        value(distillation_loss(np.array([[0.0, 2.0]]), rare, rare, alpha=0.0))


def test_sample_weights_and_log_prior():
    logits = np.zeros((2, 2), np.float32)
    hard = np.array([[1.0, 0.0], [0.0, 1.0]])
    teacher = np.full((2, 2), 0.5)
    # both rows have hard term log 2 and soft term 0; weights 2 and 0 average to log 2
    assert value(distillation_loss(logits, hard, teacher, sample_weight=np.array([2.0, 0.0]))) == \
        pytest.approx(0.5 * math.log(2), abs=1e-6)
    np.testing.assert_allclose(log_prior(np.array([0, 0, 0, 1]), 2), np.log([0.75, 0.25]), rtol=1e-6)
    with pytest.raises(ValueError, match="no example"):
        log_prior(np.array([0, 0]), 2)


def test_the_prior_share_is_the_most_accurate_that_keeps_macro_f1():
    # 8 faces of class 0 and 2 of class 1; balanced scores get class 1 right but one class-0 face
    # wrong; with the prior fully back every face is called class 0.
    labels = np.array([0] * 8 + [1] * 2)
    logits = np.zeros((10, 2))
    logits[:8, 0] = 1.0
    logits[7] = [0.0, 0.3]          # a class-0 face that looks rare
    logits[8:, 1] = [0.9, 1.2]      # the class-1 faces
    prior = np.log(np.array([0.8, 0.2]))  # log 4 = 1.386 between the classes
    c, table = choose_prior_share(logits, labels, prior, tau=1.0, min_macro_f1=0.0, step=0.25)
    assert list(table) == [0.0, 0.25, 0.5, 0.75, 1.0]
    # c = 0: 9/10 right; c = 0.25 (shift 0.347): face 7 right (0.3 < 0.347), class-1 faces right -> 10/10
    assert table[0.0]["accuracy"] == 0.9 and table[0.25]["accuracy"] == 1.0
    # c = 1 (shift 1.386) turns both class-1 faces into class 0: 8/10, recall [1, 0]
    assert table[1.0]["accuracy"] == 0.8 and table[1.0]["recall"] == [1.0, 0.0]
    assert c == 0.25
    c_strict, _ = choose_prior_share(logits, labels, prior, tau=1.0, min_macro_f1=1.01, step=0.25)
    assert c_strict == 0.25  # none reaches it: the highest macro-F1, the smallest c among ties


@pytest.fixture(scope="module")
def batch(faces):
    return np.stack([faces[name] for name in sorted(faces)] * 4)  # (28, 48, 48) uint8


@pytest.mark.parametrize("name", sorted(camera_augment.TRANSFORMS))
def test_each_transform_keeps_shape_and_range_and_changes_the_faces(name, batch):
    transform = camera_augment.TRANSFORMS[name]
    kwargs = {} if name == "geometry" else {"p": 1.0}
    out = transform(batch, np.random.default_rng(0), **kwargs)
    assert out.shape == batch.shape and out.dtype == np.uint8
    changed = np.abs(out.astype(int) - batch.astype(int)).mean((1, 2)) > 0.5
    assert changed.mean() >= 0.9, f"{name} changed only {changed.mean():.0%} of the faces"
    # the face stays the same face: closer to its source than to any other fixture face
    flat = lambda a: (a.reshape(len(a), -1).astype(np.float32) - a.reshape(len(a), -1).mean(1, keepdims=True))
    src, dst = flat(batch[:7]), flat(out[:7] if name != "geometry" else transform(batch[:7], np.random.default_rng(1), rotation=5, shift=0.05, scale=0.05, flip=0.0))
    corr = (dst / np.linalg.norm(dst, axis=1, keepdims=True)) @ (src / np.linalg.norm(src, axis=1, keepdims=True)).T
    assert (corr.argmax(1) == np.arange(7)).all(), name


def test_transforms_with_probability_zero_change_nothing(batch):
    rng = np.random.default_rng(0)
    for name, transform in camera_augment.TRANSFORMS.items():
        if name != "geometry":
            np.testing.assert_array_equal(transform(batch, rng, p=0.0), batch)
    same = camera_augment.geometry(batch, rng, rotation=0, shift=0, scale=0, flip=0)
    np.testing.assert_array_equal(same, batch)


def test_resolution_loss_removes_fine_detail(batch):
    """A face shrunk to 24 px and back has no more detail than 24 px carry: its Laplacian energy drops."""
    out = camera_augment.resolution_loss(batch, np.random.default_rng(0), low=24, high=24, p=1.0)
    energy = lambda a: np.mean([cv2.Laplacian(f, cv2.CV_32F).var() for f in a])
    assert energy(out) < 0.6 * energy(batch)


def test_mirror_and_random_crop(batch):
    mirrored = camera_augment.geometry(batch[:1], np.random.default_rng(0), rotation=0, shift=0, scale=0, flip=1.0)
    np.testing.assert_array_equal(mirrored[0], batch[0][:, ::-1])
    crops = camera_augment.random_crop(batch, np.random.default_rng(0), 40)
    assert crops.shape == (len(batch), 40, 40) and crops.dtype == np.uint8
    for face, crop in zip(batch, crops):  # each crop is a 40x40 window of its face
        hit = cv2.matchTemplate(face, crop, cv2.TM_SQDIFF)
        assert hit.min() < 1e-3  # an exact match (up to float rounding)
