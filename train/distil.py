"""Distil the served pair into one network, in PyTorch, keeping every class alive.

    python -m train.distil --data fer2013.csv.gz --ferplus fer2013new.csv.gz \\
        --teacher model.json --weights model_weights.h5 --init m1 --width 64 --crop 40 \\
        --seconds 5400 --out ~/.cache/fer-server/distil --name d64

1. **Teachers, once.** The served graph (``--teacher``/``--weights``, the
   weighted pair) is rebuilt in PyTorch from the Keras files, checked
   against its PublicTest accuracy (printed; 72.81% for the shipped pair,
   as in Keras), and run once over the Training faces.  The probabilities are cached in
   ``OUT/teacher-DIGEST.npz`` (DIGEST: the weights file's SHA-256) and
   reused by every later run.
2. **Student.** ``train.torch_gpu.FerVGG`` of ``--width``, trained on
   random ``--crop`` windows and served on the centre crop (a ``Cropping2D``
   border of ``(48 - crop) / 2`` pixels in the Keras graph).  ``--init m1``
   starts from that member of the teacher graph (same width required).
3. **Views as cameras see them.** ``train.camera_augment.camera_views``:
   lighting, blur, noise, resolution loss, box jitter (shift and scale
   12%, rotation 15 degrees, mirror) and JPEG artefacts.
4. **Loss.** ``train.losses.distillation_loss``: ``(1 - alpha)`` x cross
   entropy on the hard target (one-hot FER2013 label mixed with the FER+
   votes by ``--ferplus-weight``) + ``alpha`` x T^2 x KL to the teacher at
   temperature T, both on logit-adjusted scores (``tau`` x log prior, Menon
   et al. 2021), so the network learns scores without the training priors.
5. **Choosing the prior back.** At the end ``c x log prior`` (c on a 0.05
   grid in [0, tau]) is added to the output bias; c is chosen on PublicTest
   as the most accurate value whose macro-F1 is at least
   ``--min-macro-f1``, and the export's metadata lists every c's accuracy,
   macro-F1 and per-class recall.

SGD with Nesterov momentum, cosine learning rate from ``--lr`` (0.3 epoch of
warm-up), an exponential moving average of the weights; ``--seconds`` fixes
the number of epochs after timing the first one.  A checkpoint
(``OUT/NAME.ckpt``) is written after every epoch and ``--resume`` carries on
from it.  The export ``OUT/NAME.npz`` is what ``python -m train.import_weights
OUT/NAME.npz@BORDER`` turns into ``model.json`` + ``model_weights.h5``.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # train.losses runs as torch operations

import argparse
import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train.camera_augment import camera_views, random_crop
from train.data import load_ferplus_votes
from train.logit_adjust import choose_prior_share, summary
from train.losses import distillation_loss, log_prior
from train.torch_gpu import FerVGG, export, load_arrays, predict_logits

SIDE = 48


# ----------------------------------------------------------------------------- the teacher graph

def read_served_graph(model_json, weights_h5):
    """The members of a ``train.model.build_ensemble`` graph as PyTorch networks.

    Args:
        model_json: the Keras architecture (``m{i}_`` layer prefixes, optional
            ``m{i}_crop`` Cropping2D and ``m{i}_weight`` Rescaling layers).
        weights_h5: its weights in the classic Keras HDF5 layout.

    Returns:
        list of ``(FerVGG in eval mode, border in pixels, weight)``; the
        weights sum to 1.

    Raises:
        ValueError: the graph has no ``m0_`` member.
    """
    import h5py

    layers = {layer["config"]["name"]: layer for layer in json.loads(Path(model_json).read_text())["config"]["layers"]}
    members = []
    with h5py.File(weights_h5, "r") as f:
        i = 0
        while f"m{i}_block1_conv1" in f or (i == 0 and "block1_conv1" in f):
            prefix = f"m{i}_" if f"m{i}_block1_conv1" in f else ""
            width = _dataset(f, prefix + "block1_conv1", "kernel").shape[-1]
            net = FerVGG(width)
            load_keras_member(net, lambda layer, name: _dataset(f, prefix + layer, name))
            crop = layers.get(f"{prefix}crop", {}).get("config", {}).get("cropping", [[0, 0]])
            scale = layers.get(f"{prefix}weight", {}).get("config", {}).get("scale", 1.0)
            members.append((net.eval(), int(crop[0][0]), float(scale)))
            if not prefix:
                break
            i += 1
    if not members:
        raise ValueError(f"{weights_h5}: no member block1_conv1 / m0_block1_conv1 found")
    total = sum(w for _, _, w in members)
    return [(net, border, w / total) for net, border, w in members]


def _dataset(f, layer, name):
    group = f[layer]
    for key in group.attrs["weight_names"]:
        key = key.decode() if isinstance(key, bytes) else key
        if key.rsplit("/", 1)[-1].split(":")[0] == name:
            return group[key][()]
    raise KeyError(f"{layer} has no {name}")


def load_keras_member(net, read):
    """Copy Keras weights into ``FerVGG`` ``net``; ``read(layer, name)`` returns one array."""
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in net.features if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(convs, bns)):
            block, n = i // 2 + 1, i % 2 + 1
            conv.weight.copy_(torch.from_numpy(read(f"block{block}_conv{n}", "kernel")).permute(3, 2, 0, 1))
            for t, name in ((bn.weight, "gamma"), (bn.bias, "beta"), (bn.running_mean, "moving_mean"),
                            (bn.running_var, "moving_variance")):
                t.copy_(torch.from_numpy(read(f"block{block}_bn{n}", name)))
        net.fc.weight.copy_(torch.from_numpy(read("predictions", "kernel")).t())
        net.fc.bias.copy_(torch.from_numpy(read("predictions", "bias")))


@torch.no_grad()
def teacher_probabilities(members, faces, mirror=False, batch=128):
    """The served graph's probabilities, ``(N, 7)`` float32, for ``(N, 48, 48)`` uint8 faces.

    With ``mirror`` each face's answer is the mean over the face and its mirror image.
    """
    for net, _, _ in members:
        net.to(memory_format=torch.channels_last)
    out = []
    for i in range(0, len(faces), batch):
        x = torch.from_numpy(faces[i:i + batch]).float().div(255).unsqueeze(1)
        views = [x, x.flip(-1)] if mirror else [x]
        p = 0
        for view in views:
            for net, border, weight in members:
                v = view[..., border:SIDE - border, border:SIDE - border] if border else view
                p = p + weight * torch.softmax(net(v.contiguous(memory_format=torch.channels_last)), 1)
        out.append((p / len(views)).numpy())
    return np.concatenate(out).astype(np.float32)


@torch.no_grad()
def recalibrate_batchnorm(net, faces, crop, batch=256):
    """Recompute ``net``'s batch-norm running statistics on clean faces (their centre ``crop``), in place.

    The statistics gathered in training describe the augmented views; the
    server feeds clean crops.  Cumulative averages over one pass
    (``momentum=None``), other weights unchanged (Ioffe & Szegedy 2015).

    Args:
        faces: ``(N, 48, 48)`` uint8.
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    border = (SIDE - crop) // 2
    for i in range(0, len(faces), batch):
        x = torch.from_numpy(faces[i:i + batch, border:SIDE - border, border:SIDE - border]).float().div(255)
        net(x.unsqueeze(1))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    net.eval()


def file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- training

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.distil", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="fer2013.csv(.gz) (Training and PublicTest rows)")
    p.add_argument("--ferplus", help="fer2013new.csv(.gz): the FER+ votes mixed into the hard target")
    p.add_argument("--ferplus-weight", type=float, default=0.5, help="share of the FER+ votes (default 0.5)")
    p.add_argument("--teacher", default="model.json", help="teacher architecture (default model.json)")
    p.add_argument("--weights", default="model_weights.h5", help="teacher weights (default model_weights.h5)")
    p.add_argument("--init", default="m1", help="start from this teacher member (m0, m1, ...) or 'none'")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--crop", type=int, default=40, help="training crop side; served on the centre crop")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term (default 0.5)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--tau", type=float, default=1.0, help="logit adjustment strength (default 1)")
    p.add_argument("--min-macro-f1", type=float, default=0.714,
                   help="macro-F1 on PublicTest the chosen prior share must reach (default 0.714, the pair's)")
    p.add_argument("--epochs", type=int, default=60, help="at most this many epochs")
    p.add_argument("--seconds", type=float, default=0, help="time budget; 0: run --epochs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--ema", type=float, default=0.998, help="weight EMA decay per step (default 0.998)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use only the first N Training rows (tests)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--resume", action="store_true", help="carry on from OUT/NAME.ckpt")
    p.add_argument("--recalibrate-bn", action="store_true",
                   help="also try the averaged weights with batch-norm statistics recomputed on the clean "
                        "Training faces' centre crops (training saw camera-like views)")
    p.add_argument("--finish", action="store_true",
                   help="with --resume: train no further; choose the weights and prior share and export now")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="distil")
    args = p.parse_args(argv)
    if not 8 <= args.crop <= SIDE or (SIDE - args.crop) % 2:
        p.error(f"--crop must be an even number of pixels in 8-{SIDE}, got {args.crop}")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / f"{args.name}.log", "a", buffering=1)
    start = time.monotonic()

    def log(**items):
        line = json.dumps({"run": args.name, "t": round(time.monotonic() - start, 1), **items})
        print(line, flush=True)
        log_file.write(line + "\n")

    if args.threads:
        torch.set_num_threads(args.threads)
    x, y, xv, yv = load_arrays(args.data)
    n_train = len(y)
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]

    # The teacher, once.
    members = read_served_graph(args.teacher, args.weights)
    cache = out / f"teacher-{file_digest(args.weights)}.npz"
    if cache.exists():
        with np.load(cache) as d:
            teacher, teacher_public = d["train"], d["public"]
    else:
        teacher_public = teacher_probabilities(members, xv)
        teacher = teacher_probabilities(members, x)
        if not args.limit:
            np.savez(cache, train=teacher, public=teacher_public)
    teacher = teacher[:len(y)]
    log(event="teacher", public_test=summary(yv, teacher_public.argmax(1)), cache=str(cache))

    hard = np.eye(7, dtype=np.float32)[y]
    if args.ferplus and args.ferplus_weight > 0:
        votes = load_ferplus_votes(args.ferplus, "Training", n_train)[:len(y)]
        has = votes.sum(1, keepdims=True) > 0
        hard = np.where(has, (1 - args.ferplus_weight) * hard + args.ferplus_weight * votes, hard)
    prior = log_prior(y)

    torch.manual_seed(args.seed)
    model = FerVGG(args.width)
    if args.init != "none":
        index = int(args.init.lstrip("m"))
        net, border, _ = members[index]
        if net.fc.in_features != 8 * args.width or border != (SIDE - args.crop) // 2:
            sys.exit(f"error: --init {args.init} is width {net.fc.in_features // 8} on a {SIDE - 2 * border} px "
                     f"crop; --width {args.width} --crop {args.crop} do not match it")
        model.load_state_dict(net.state_dict())
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    steps = len(x) // args.batch_size
    epoch, epochs, history = 0, args.epochs, []
    ckpt = out / f"{args.name}.ckpt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        rng.bit_generator.state = state["rng"]
        epoch, epochs, history = state["epoch"], state["epochs"], state["history"]
        if args.finish:
            epochs = epoch
        log(event="resume", epoch=epoch, epochs=epochs)
    log(event="start", train=len(x), public_test=len(xv), args=vars(args))
    xv_t, prior_t = torch.from_numpy(xv), torch.from_numpy(prior)

    warmup = 0.3  # epochs

    def lr_at(t):
        if t < warmup:
            return args.lr * (0.1 + 0.9 * t / warmup)
        return 0.5 * args.lr * (1 + math.cos(math.pi * min(1.0, (t - warmup) / max(1, epochs - warmup))))

    while epoch < epochs:
        t0 = time.monotonic()
        model.train()
        order = rng.permutation(len(x))
        total = 0.0
        for step in range(steps):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            faces = random_crop(camera_views(x[idx], rng), rng, args.crop)
            batch = torch.from_numpy(faces).float().div_(255).unsqueeze(1)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch + step / steps)
            loss = distillation_loss(model(batch), torch.from_numpy(hard[idx]), torch.from_numpy(teacher[idx]),
                                     temperature=args.temperature, alpha=args.alpha, prior=prior_t, tau=args.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(model)
            total += float(loss.detach())
        epoch += 1
        seconds = time.monotonic() - t0
        if epoch == 1 and args.seconds and not args.resume:
            epochs = max(2, min(args.epochs, int(args.seconds / (seconds * 1.04))))
            log(event="plan", epoch_seconds=round(seconds, 1), epochs=epochs)
        elif args.seconds and epoch < epochs:
            # A busier machine makes later epochs slower: shorten the plan to fit the budget.
            per_epoch = (time.monotonic() - start) / epoch
            fit = max(epoch + 1, int((args.seconds - (time.monotonic() - start)) / per_epoch) + epoch)
            if fit < epochs:
                epochs = fit
                log(event="replan", epochs=epochs, epoch_seconds=round(per_epoch, 1))
        logits = predict_logits(ema.module, xv_t, args.crop, "centre").numpy()
        entry = {"epoch": epoch, "loss": round(total / steps, 4), "lr": round(lr_at(epoch), 5),
                 "epoch_seconds": round(seconds, 1),
                 "balanced": summary(yv, logits.argmax(1)),
                 "prior_back": summary(yv, (logits + args.tau * prior).argmax(1))}
        history.append(entry)
        log(event="epoch", **entry)
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "rng": rng.bit_generator.state, "epoch": epoch, "epochs": epochs, "history": history},
                   str(ckpt) + ".tmp")
        os.replace(str(ckpt) + ".tmp", ckpt)

    # Choose the raw or averaged weights, then the prior share, on PublicTest.
    candidates = [("raw", model), ("ema", ema.module)]
    if args.recalibrate_bn:
        clean = copy.deepcopy(ema.module)
        recalibrate_batchnorm(clean, x, args.crop)
        candidates.append(("ema_clean_bn", clean))
    results = {}
    for which, net in candidates:
        logits = predict_logits(net, xv_t, args.crop, "centre").numpy()
        c, table = choose_prior_share(logits, yv, prior, args.tau, args.min_macro_f1)
        results[which] = {"shift": c, "table": table}
    kept = max(results, key=lambda w: results[w]["table"][results[w]["shift"]]["accuracy"])
    net, c = dict(candidates)[kept], results[kept]["shift"]
    with torch.no_grad():
        net.fc.bias.add_(c * prior_t)
    chosen = results[kept]["table"][c]
    log(event="done", kept=kept, shift=c, public_test=chosen, teacher_public_test=summary(yv, teacher_public.argmax(1)),
        candidates={w: r["table"][r["shift"]] | {"shift": r["shift"]} for w, r in results.items()})
    export(out / f"{args.name}.npz", net, xv_t, args, epochs,
           {"kept": kept, "shift": c, "public_test": chosen, "shifts": results[kept]["table"], "history": history})


if __name__ == "__main__":
    sys.exit(main())
