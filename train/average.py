"""Weight averaging of the last epochs (stochastic weight averaging).

Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
Generalization": the mean of the weights from several epochs near the end
of training is one model that often generalises better than any of them.
The batch-normalisation statistics of the mean weights are recomputed on
training images, as in that paper.
"""
import numpy as np


def average_weights(model, weight_files):
    """Load the mean of the weights in ``weight_files`` into ``model``.

    Args:
        model: a built ``keras.Model`` of the architecture the files hold.
        weight_files: Keras ``.weights.h5`` files (``Model.save_weights``).

    Raises:
        ValueError: when ``weight_files`` is empty.
    """
    if not weight_files:
        raise ValueError("no weight files to average")
    total = None
    for path in weight_files:
        model.load_weights(str(path))
        values = [w.numpy().astype(np.float64) for w in model.weights]
        total = values if total is None else [t + v for t, v in zip(total, values)]
    for w, t in zip(model.weights, total):
        w.assign((t / len(weight_files)).astype(w.dtype))


def recalibrate_batchnorm(model, images, batch_size=256):
    """Recompute every BatchNormalization layer's moving mean and variance
    over ``images``, the other weights unchanged.

    Each becomes the mean of its per-batch values, weighted by batch size,
    as ``torch.optim.swa_utils.update_bn`` does (the variance so leaves out
    the small spread between batch means).

    Args:
        images: ``(N, 48, 48, 1)`` float32 in [0, 1], training faces without
            augmentation.
    """
    import keras

    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momentum = [layer.momentum for layer in layers]
    try:
        seen = 0
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            for layer in layers:  # moving = moving * momentum + batch * (1 - momentum)
                layer.momentum = seen / (seen + len(batch))
            model(batch, training=True)
            seen += len(batch)
    finally:
        for layer, m in zip(layers, momentum):
            layer.momentum = m
