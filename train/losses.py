"""The distillation loss with logit adjustment, in ``keras.ops`` so that it runs on any backend.

``train.distil`` trains in PyTorch (``KERAS_BACKEND=torch``: these ops are
then differentiable torch operations); the tests check the same function on
NumPy inputs with the TensorFlow backend.
"""
import numpy as np
from keras import ops


def log_prior(labels, num_classes=7):
    """``(C,)`` float32 log class frequencies of ``labels`` (``(N,)`` ints in ``[0, C)``).

    Raises:
        ValueError: a class has no example (its log-prior would be -inf).
    """
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"class(es) {np.flatnonzero(counts == 0).tolist()} have no example")
    return np.log(counts / counts.sum()).astype(np.float32)


def soften(probs, temperature):
    """Teacher probabilities at a temperature: ``softmax(log(probs) / T)`` (Hinton et al. 2015).

    Args:
        probs: ``(N, C)`` probabilities (rows sum to 1; zeros are clipped to 1e-8).
        temperature: T > 0; T > 1 flattens the distribution.

    Returns:
        ``(N, C)`` float32, rows summing to 1.
    """
    return ops.softmax(ops.log(ops.maximum(ops.cast(probs, "float32"), 1e-8)) / temperature, axis=-1)


def distillation_loss(logits, hard, teacher, temperature=2.0, alpha=0.5, prior=None, tau=1.0,
                      sample_weight=None):
    """Knowledge distillation with a logit-adjusted loss, the mean over the batch.

    ``adjusted = logits + tau * log_prior`` (Menon et al. 2021, "Long-tail
    learning via logit adjustment", eq. 10: the network learns logits
    without the training priors, so rare classes such as Disgust keep their
    recall; adding ``c * log_prior`` back at test time, c in [0, tau],
    moves between balanced error and plain accuracy).  Per face::

        hard term = -sum_k hard_k * log softmax(adjusted)_k
        soft term = T^2 * KL(soften(teacher, T) || softmax(adjusted / T))
        loss      = (1 - alpha) * hard term + alpha * soft term

    The T^2 factor keeps the soft term's gradients on the scale of the hard
    term's (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network").

    Args:
        logits: ``(B, C)`` float32 student logits (before softmax).
        hard: ``(B, C)`` float32 target distribution: one-hot FER2013
            labels, optionally mixed with the FER+ votes.
        teacher: ``(B, C)`` float32 teacher probabilities.
        temperature: T > 0 of the soft term.
        alpha: weight of the soft term in [0, 1].
        prior: ``(C,)`` log class priors (``log_prior``), or None for no adjustment.
        tau: strength of the logit adjustment (1 in Menon et al.).
        sample_weight: ``(B,)`` weights or None.

    Returns:
        A scalar float32 tensor of the backend.
    """
    logits = ops.cast(logits, "float32")
    if prior is not None and tau:
        logits = logits + tau * ops.cast(prior, "float32")
    hard_term = -ops.sum(ops.cast(hard, "float32") * ops.log_softmax(logits, axis=-1), axis=-1)
    target = soften(teacher, temperature)
    soft_term = ops.sum(target * (ops.log(ops.maximum(target, 1e-8))
                                  - ops.log_softmax(logits / temperature, axis=-1)), axis=-1)
    per_face = (1 - alpha) * hard_term + alpha * temperature ** 2 * soft_term
    if sample_weight is not None:
        per_face = per_face * ops.cast(sample_weight, "float32")
    return ops.mean(per_face)
