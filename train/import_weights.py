"""Turn ``train.torch_gpu``'s ``NAME.npz`` into ``model.json`` + ``model_weights.h5``.

    python -m train.import_weights runs/w64.npz --data fer2013.csv.gz --out .
    python -m train.import_weights runs/w48h.npz runs/w64s.npz@4 --data fer2013.csv.gz --out .

One file: ``train.model.build_model`` at the file's width, its weights set
from the arrays (stored under the Keras layer names), checked against the
probabilities PyTorch computed for the first 256 PublicTest faces, and saved
in the classic HDF5 layout.  Several files: ``train.model.build_ensemble``,
one graph averaging the members' probabilities; ``PATH@B`` makes that member
see the face with B pixels cropped from each side (4 gives the 40x40 centre
crop of a member trained on 40x40 crops).  Each member is checked on its own.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from train.model import build_ensemble, build_model


class ExportError(ValueError):
    """The file is not a ``train.torch_gpu`` export, or Keras disagrees with it."""


def read_export(path):
    """Load one export.

    Returns:
        ``(meta, weights, check_logits)``: ``meta`` the JSON dict (``width``,
        ``args``, accuracies), ``weights`` ``{layer name: [arrays]}`` float32 in
        Keras's order, ``check_logits`` ``(256, 7)`` float32 PyTorch logits.

    Raises:
        ExportError: a missing key or an unreadable file.
    """
    try:
        with np.load(path) as d:
            meta = json.loads(str(d["meta"]))
            check = d["check_logits"].astype(np.float32)
            weights = {}
            for key in d.files:
                if "__" in key:
                    layer, index = key.rsplit("__", 1)
                    weights.setdefault(layer, {})[int(index)] = d[key].astype(np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise ExportError(f"{path}: not a train.torch_gpu export ({exc})") from None
    return meta, {k: [v[i] for i in sorted(v)] for k, v in weights.items()}, check


def build_keras(meta, weights):
    """``build_model(width)`` with ``weights`` (from ``read_export``) set.

    Raises:
        ExportError: a layer's arrays are missing or have the wrong shape.
    """
    model = build_model(width=int(meta["width"]))
    for layer in model.layers:
        if layer.weights:
            try:
                layer.set_weights(weights[layer.name])
            except (KeyError, ValueError) as exc:
                raise ExportError(f"layer {layer.name}: {exc}") from None
    return model


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def check_keras(model, check_logits, faces, path, tolerance=5e-3):
    """Raise ExportError when Keras's probabilities on ``faces`` differ from PyTorch's.

    Args:
        faces: ``(256, 48, 48, 1)`` float32 in [0, 1], the first PublicTest faces.
        tolerance: largest absolute difference of a probability allowed (a GPU
            computes convolutions in TF32 by default: about 1e-3 apart).

    Returns:
        The largest difference seen.
    """
    if len(faces) != len(check_logits):
        raise ExportError(f"{path} was checked on {len(check_logits)} PublicTest faces, but the --data file has "
                          f"{len(faces)} of the first 256: give the FER2013 file it was trained with")
    got = np.asarray(model.predict(faces, verbose=0))
    gap = float(np.abs(got - softmax(check_logits)).max())
    if gap > tolerance:
        raise ExportError(f"{path}: Keras and PyTorch differ by {gap:.2g} in a probability")
    return gap


def parse_member(spec):
    """``"PATH"`` or ``"PATH@B"`` -> ``(PATH, B)``, B the border in pixels (0-23)."""
    path, _, border = spec.partition("@")
    try:
        border = int(border or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec}: the part after @ must be a whole number of pixels") from None
    if not 0 <= border < 24:
        raise argparse.ArgumentTypeError(f"{spec}: the border must be 0-23 pixels")
    return path, border


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.import_weights", description=__doc__.split("\n\n")[0])
    p.add_argument("exports", nargs="+", type=parse_member, metavar="NAME.npz[@B]",
                   help="exports from train.torch_gpu; @B crops B pixels from each side for that member")
    p.add_argument("--data", required=True, help="fer2013.csv(.gz): PublicTest faces for the check")
    p.add_argument("--out", required=True, help="folder for model.json and model_weights.h5")
    args = p.parse_args(argv)
    from model_files import save_model
    from train.data import DataError, load_fer2013_csv
    try:
        faces = load_fer2013_csv(args.data)["PublicTest"][0][:256, :, :, None].astype(np.float32) / 255
        members = []
        for path, border in args.exports:
            meta, weights, check = read_export(path)
            # PyTorch's check logits are for the whole face, whatever the member's border.
            gap = check_keras(build_keras(meta, weights), check, faces, path)
            print(f"{path}: width {meta['width']}, {meta.get('epochs')} epochs, border {border}, "
                  f"largest probability difference from PyTorch {gap:.1e}")
            members.append((meta, weights, border))
    except (ExportError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(members) == 1 and not members[0][2]:
        model = build_keras(members[0][0], members[0][1])
    else:
        model = build_ensemble([(int(meta["width"]), border) for meta, _, border in members])
        for i, (meta, weights, _) in enumerate(members):
            for layer in model.layers:
                if layer.name.startswith(f"m{i}_") and layer.weights:
                    layer.set_weights(weights[layer.name[len(f"m{i}_"):]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "model.json", out / "model_weights.h5")
    print(f"wrote {out / 'model.json'} and {out / 'model_weights.h5'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
