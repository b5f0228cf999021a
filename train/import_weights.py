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

``--member-weights 0.4,0.6`` weighs the members' probabilities instead of
taking their plain mean; ``--member-weights search`` tries every weighting
on a grid (steps of 0.05) and keeps the one most accurate on PublicTest
(``--ferplus`` adds each weighting's agreement with the FER+ majority vote
to the table, for information only).
"""
import argparse
import itertools
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


def build_keras(meta, weights, border=0):
    """``build_model(width, border=border)`` with ``weights`` (from ``read_export``) set.

    Raises:
        ExportError: a layer's arrays are missing or have the wrong shape.
    """
    model = build_model(width=int(meta["width"]), border=border)
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


def weight_grid(members, step=0.05):
    """Every weighting of ``members`` members on a grid: ``(K, members)`` float64 rows > 0 summing to 1.

    ``round(1 / step)`` parts are shared out, each member getting at least one.
    """
    parts = int(round(1 / step))
    rows = [c for c in itertools.product(range(1, parts), repeat=members - 1) if sum(c) < parts]
    return np.array([(*c, parts - sum(c)) for c in rows], np.float64).reshape(-1, members) / parts


def score_weighting(member_probs, weights, labels, votes=None):
    """Accuracy of the weighted mean of the members' probabilities.

    Args:
        member_probs: ``(M, N, C)`` each member's probabilities on the same N faces.
        weights: ``(M,)`` weights summing to 1.
        labels: ``(N,)`` int true classes (PublicTest's).
        votes: optional ``(N, C)`` FER+ vote distributions (rows of 0: no vote).

    Returns:
        ``{"weights", "accuracy"}``, plus ``"ferplus"`` with ``votes``: the
        agreement with the majority vote over the rows that have votes.
    """
    pred = np.tensordot(np.asarray(weights, np.float64), np.asarray(member_probs, np.float64), axes=1).argmax(1)
    row = {"weights": [round(float(w), 4) for w in weights], "accuracy": float((pred == np.asarray(labels)).mean())}
    if votes is not None:
        has = votes.sum(1) > 0
        row["ferplus"] = float((pred[has] == votes[has].argmax(1)).mean())
    return row


def search_weights(member_probs, labels, step=0.05, votes=None):
    """Choose the weighting of the members' probabilities most accurate on ``labels``.

    Args:
        member_probs, labels, votes: as ``score_weighting``.
        step: grid step of ``weight_grid``.

    Returns:
        ``(best, table)``: ``best`` the ``(M,)`` weights; ``table`` the
        ``score_weighting`` rows of every grid point, best first.  Ties go
        to the weighting nearest the plain mean.
    """
    grid = weight_grid(len(member_probs), step)
    spread = np.abs(grid - 1 / grid.shape[1]).sum(1)
    rows = [score_weighting(member_probs, w, labels, votes) for w in grid]
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["accuracy"], spread[i]))
    return grid[order[0]], [rows[i] for i in order]


def member_probabilities(members, faces):
    """Each ``(meta, weights, border)`` member's probabilities ``(M, N, 7)`` float32 on ``faces``.

    Args:
        faces: ``(N, 48, 48, 1)`` float32 in [0, 1]; a member with border B sees
            the centre ``(48 - 2B)`` pixels square, as in the served graph.
    """
    out = []
    for meta, weights, border in members:
        model = build_ensemble([(int(meta["width"]), border)])
        set_member(model, 0, weights)
        out.append(np.asarray(model.predict(faces, batch_size=256, verbose=0)))
    return np.stack(out)


def set_member(model, index, weights):
    """Set the layers ``m{index}_*`` of a ``build_ensemble`` graph from ``{layer name: [arrays]}``."""
    prefix = f"m{index}_"
    for layer in model.layers:
        if layer.name.startswith(prefix) and layer.weights:
            layer.set_weights(weights[layer.name[len(prefix):]])


def parse_weights(text):
    """``"search"`` or ``"0.4,0.6"`` (numbers > 0) -> ``"search"`` or a list of floats."""
    if text == "search":
        return text
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: give numbers separated by commas, or 'search'") from None
    if not all(w > 0 for w in weights):
        raise argparse.ArgumentTypeError(f"{text}: every weight must be above 0")
    return weights


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
    p.add_argument("--member-weights", type=parse_weights, metavar="W,W,...|search",
                   help="weigh the members' probabilities (default: their plain mean); 'search' picks the "
                        "weighting most accurate on PublicTest")
    p.add_argument("--ferplus", help="fer2013new.csv(.gz): with --member-weights search, also report each "
                                     "weighting's agreement with the FER+ majority vote")
    args = p.parse_args(argv)
    if args.member_weights is not None and len(args.exports) < 2:
        p.error("--member-weights needs two or more exports")
    if args.ferplus and args.member_weights != "search":
        p.error("--ferplus goes with --member-weights search")
    if isinstance(args.member_weights, list) and len(args.member_weights) != len(args.exports):
        p.error(f"--member-weights has {len(args.member_weights)} weights for {len(args.exports)} exports")
    from fer_server.model.files import save_model
    from train.data import DataError, load_fer2013_csv, load_ferplus_votes
    try:
        public_faces, public_labels = load_fer2013_csv(args.data)["PublicTest"]
        public_faces = public_faces[..., None].astype(np.float32) / 255
        votes = load_ferplus_votes(args.ferplus, "PublicTest", len(public_labels)) if args.ferplus else None
        members = []
        for path, border in args.exports:
            meta, weights, check = read_export(path)
            # PyTorch's check logits are for the whole face, whatever the member's border.
            gap = check_keras(build_keras(meta, weights), check, public_faces[:256], path)
            print(f"{path}: width {meta['width']}, {meta.get('epochs')} epochs, border {border}, "
                  f"largest probability difference from PyTorch {gap:.1e}")
            members.append((meta, weights, border))
    except (ExportError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    weights = args.member_weights
    if weights == "search":
        probs = member_probabilities(members, public_faces)
        weights, table = search_weights(probs, public_labels, votes=votes)
        print(f"PublicTest accuracy by member weights ({len(table)} tried; best first)")
        for row in table[:10]:
            extra = f"  FER+ majority {row['ferplus']:.2%}" if "ferplus" in row else ""
            print(f"  {','.join(f'{w:g}' for w in row['weights'])}: {row['accuracy']:.2%}{extra}")
        plain = score_weighting(probs, np.full(len(members), 1 / len(members)), public_labels, votes)
        print(f"  plain mean: {plain['accuracy']:.2%}"
              + (f"  FER+ majority {plain['ferplus']:.2%}" if "ferplus" in plain else ""))
        weights = list(weights)
    if len(members) == 1:
        model = build_keras(*members[0])
    else:
        model = build_ensemble([(int(meta["width"]), border) for meta, _, border in members], weights=weights)
        for i, (_, member_weights, _) in enumerate(members):
            set_member(model, i, member_weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "model.json", out / "model_weights.h5")
    print(f"wrote {out / 'model.json'} and {out / 'model_weights.h5'}"
          + (f" (member weights {','.join(f'{w:g}' for w in weights)})" if weights else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
