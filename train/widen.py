"""Widen a trained model without changing what it computes (Net2WiderNet).

    python -m train.widen --model run/model.json --weights run/model_weights.h5 --width 64 --out wide.weights.h5
    python -m train --data fer2013.csv.gz --width 64 --init-weights wide.weights.h5 ...

Chen, Goodfellow & Shlens 2016, "Net2Net: Accelerating Learning via
Knowledge Transfer", section 3.1.  Each convolution of ``train.model`` gets
more filters: the new ones copy randomly chosen old ones (kernel and
batch-norm parameters alike), and the next layer's weights from every copy of
a filter are divided by the number of copies, so the wider network gives the
same probabilities as the narrow one.  Training then continues from there,
with more capacity, instead of from random weights.  A little noise on the
divided weights lets the copies drift apart (the paper's symmetry breaking).
"""
import argparse
import sys

import numpy as np


def _conv_names(model):
    return [layer.name for layer in model.layers if layer.name.endswith(("_conv1", "_conv2"))]


def widen_weights(narrow, wide, noise=0.01, seed=0):
    """Copy ``narrow``'s weights into the wider ``wide``, preserving the function.

    Args:
        narrow: a built ``train.model.build_model`` network, trained.
        wide: the same architecture with a ``width`` at least as large
            (``build_model(num_classes, width)``); its weights are replaced.
        noise: standard deviation of the multiplicative noise put on the
            divided weights of copied filters, relative to each weight
            (0 gives an exact copy of the function).
        seed: seed of the choice of copied filters and of the noise.

    Raises:
        ValueError: when the two models do not have the same layers and
            classes, or ``wide`` is narrower.
    """
    rng = np.random.default_rng(seed)
    names = _conv_names(narrow)
    if names != _conv_names(wide) or narrow.output_shape != wide.output_shape:
        raise ValueError("the two models are not the same architecture with the same classes")
    mapping = None  # for the input channels of the current layer: new channel -> old channel
    for name in names:
        kernel = narrow.get_layer(name).get_weights()[0]  # (3, 3, in, out)
        if mapping is not None:
            kernel = _split_inputs(kernel, mapping, axis=2, noise=noise, rng=rng)
        old_out, new_out = kernel.shape[3], wide.get_layer(name).get_weights()[0].shape[3]
        if new_out < old_out:
            raise ValueError(f"{name}: the wide model has {new_out} filters, fewer than {old_out}")
        mapping = np.concatenate([np.arange(old_out), rng.integers(0, old_out, new_out - old_out)])
        wide.get_layer(name).set_weights([kernel[..., mapping]])
        bn = name.replace("_conv", "_bn")
        wide.get_layer(bn).set_weights([w[mapping] for w in narrow.get_layer(bn).get_weights()])
    kernel, bias = narrow.get_layer("predictions").get_weights()  # (channels, classes), (classes,)
    wide.get_layer("predictions").set_weights(
        [_split_inputs(kernel, mapping, axis=0, noise=noise, rng=rng), bias])


def _split_inputs(weights, mapping, axis, noise, rng):
    """Take the input channels along ``axis`` through ``mapping`` and divide each by its copies."""
    counts = np.bincount(mapping, minlength=weights.shape[axis])[mapping]
    shape = [1] * weights.ndim
    shape[axis] = len(mapping)
    out = np.take(weights, mapping, axis=axis) / counts.reshape(shape)
    copied = (counts > 1).reshape(shape)
    return np.where(copied, out * (1 + noise * rng.standard_normal(out.shape)), out).astype(weights.dtype)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.widen", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="model.json",
                   help="the narrow model's architecture (one network, not the shipped pair)")
    p.add_argument("--weights", default="model_weights.h5", help="the narrow model's weights")
    p.add_argument("--width", type=int, required=True, help="the new width (filters in the first block)")
    p.add_argument("--out", required=True, help="where to write the wide weights (.weights.h5 or .h5)")
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from fer_server.model.files import load_model, save_classic_weights, ModelLoadError
    from train.model import build_model

    try:
        narrow, info = load_model(args.model, args.weights)
    except ModelLoadError as e:
        sys.exit(f"error: {e}")
    wide = build_model(len(info.labels), args.width)
    try:
        widen_weights(narrow, wide, args.noise, args.seed)
    except ValueError as e:
        sys.exit(f"error: {args.model}: {e}")
    if args.out.endswith(".weights.h5"):
        wide.save_weights(args.out)
    else:
        save_classic_weights(wide, args.out)
    print(f"wrote {args.out}: {narrow.count_params():,} -> {wide.count_params():,} parameters")


if __name__ == "__main__":
    main()
