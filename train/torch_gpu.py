"""Train ``train.model``'s network in PyTorch on a GPU, and export its weights for Keras.

    python -m train.torch_gpu --data fer2013.csv.gz --ferplus fer2013new.csv.gz \\
        --width 64 --crop 40 --seconds 420 --out runs/w64

The CPU path (``python -m train``) is Keras on TensorFlow.  A machine with a
GPU often has PyTorch and no TensorFlow; this script trains the same
architecture there (four VGG blocks of two 3x3 convolutions with batch
normalisation, widths ``w, 2w, 4w, 8w``, global average pooling, dropout,
dense) and writes ``NAME.npz`` holding the weights under the Keras layer
names of ``train.model.build_model``.  ``python -m train.import_weights``
turns that into ``model.json`` + ``model_weights.h5`` on any machine with
Keras, and checks that Keras computes the same probabilities.

The recipe follows Khaireddin & Chen 2021 ("Facial Emotion Recognition:
State of the Art Performance on FER2013", arXiv:2105.03588): random crops of
``--crop`` pixels from the 48x48 face with random rotation, zoom, shift,
horizontal flips and random erasing (Zhong et al. 2020), SGD with Nesterov
momentum and weight decay; ours uses a cosine learning-rate schedule
(Loshchilov & Hutter 2017) and an exponential moving average of the weights.
Augmentation runs on the GPU.  Because the network ends in global average
pooling it also takes the whole 48x48 face at test time; the script reports
PublicTest accuracy on the whole face, on the centre crop, each with its
mirror image averaged in or not, and over the ten crops (corners, centre,
and their mirror images).

``--seconds`` is a time budget: the script times the second epoch and then
fixes the number of epochs (at most ``--epochs``) so that training ends
within the budget, and shortens that plan at an evaluation if the run falls
behind (evaluations, exports or a busier GPU); the cosine then ends sooner
from that epoch on.  Plans and replans are logged (``"event": "plan"`` /
``"replan"``) and the final count is saved; ``--epochs N --seconds 0`` runs
the plain schedule of N epochs.

``--ferplus`` with ``--soft-weight a`` trains on ``(1 - a) * one_hot(FER2013
label) + a * FER+ vote distribution`` (Barsoum et al. 2016, "Training Deep
Networks for Facial Expression Recognition with Crowd-Sourced Label
Distribution"); the FER+ classes contempt, unknown and not-a-face are
dropped, and rows with no remaining votes keep the one-hot target.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.data import load_ferplus_votes

SIDE = 48


def load_arrays(path):
    """FER2013 Training and PublicTest as arrays.

    Args:
        path: the Kaggle ``fer2013.csv`` (plain or gzip) or an ``.npz`` with
            ``x``, ``y`` (Training) and ``xv``, ``yv`` (PublicTest).

    Returns:
        ``(x, y, xv, yv)``: images ``(N, 48, 48)`` uint8, labels ``(N,)`` int64.
    """
    if str(path).endswith(".npz"):
        with np.load(path) as d:
            return d["x"], d["y"].astype(np.int64), d["xv"], d["yv"].astype(np.int64)
    from train.data import load_fer2013_csv
    splits = load_fer2013_csv(path)
    return (*splits["Training"], *splits["PublicTest"])


class FerVGG(nn.Module):
    """``train.model.build_model`` in PyTorch; returns logits ``(N, 7)`` float32.

    Input ``(N, 1, H, W)`` float32 in [0, 1], H = W = 40 or 48 (any side
    divisible by 8 works: global average pooling ends the body).  Batch
    normalisation uses Keras's epsilon (1e-3) and momentum (0.99), so the
    exported statistics mean the same thing there.
    """

    def __init__(self, width, num_classes=7, dropout=0.4):
        super().__init__()
        layers, cin = [], 1
        for filters in (width, 2 * width, 4 * width, 8 * width):
            for _ in (1, 2):
                layers += [nn.Conv2d(cin, filters, 3, padding=1, bias=False),
                           nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01), nn.ReLU(inplace=True)]
                cin = filters
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(self.features(x).mean((2, 3))))


def keras_weights(model):
    """The model's weights under ``train.model.build_model``'s layer names.

    Returns:
        ``{"block1_conv1/0": kernel (3, 3, in, out), "block1_bn1/0..3": gamma,
        beta, moving mean, moving variance, "predictions/0": (in, 7),
        "predictions/1": (7,)}``, float32 numpy arrays in Keras's order.
    """
    out, convs = {}, [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    for i, (conv, bn) in enumerate(zip(convs, bns)):
        block, n = i // 2 + 1, i % 2 + 1
        out[f"block{block}_conv{n}/0"] = conv.weight.detach().permute(2, 3, 1, 0).float().cpu().numpy()
        for j, t in enumerate((bn.weight, bn.bias, bn.running_mean, bn.running_var)):
            out[f"block{block}_bn{n}/{j}"] = t.detach().float().cpu().numpy()
    out["predictions/0"] = model.fc.weight.detach().t().float().cpu().numpy()
    out["predictions/1"] = model.fc.bias.detach().float().cpu().numpy()
    return out


def augment(x, crop, generator, rotation=15.0, zoom=0.15, shift=0.10, contrast=0.3,
            brightness=0.1, erase=0.5):
    """Random training views of a batch, computed on its device.

    Args:
        x: ``(B, 48, 48)`` uint8.
        crop: output side in pixels (<= 48).
        generator: a ``torch.Generator`` on ``x``'s device.
        rotation: degrees; zoom, shift: fractions of the scale and of the side;
        contrast, brightness: fractions; erase: probability of erasing one
            random rectangle (2-25% of the area, aspect 0.3-3.3).

    Returns:
        ``(B, 1, crop, crop)`` float32 in [0, 1].
    """
    b, dev = x.shape[0], x.device

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*(shape or (b,)), device=dev, generator=generator)

    img = x.float().div_(255).unsqueeze(1)
    angle = uniform(-rotation, rotation) * math.pi / 180
    extent = (crop / SIDE) / uniform(1 - zoom, 1 + zoom)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    reach = 1 - crop / SIDE + 2 * shift
    cos, sin = torch.cos(angle) * extent, torch.sin(angle) * extent
    theta = torch.stack([torch.stack([cos * flip, -sin, uniform(-reach, reach)], 1),
                         torch.stack([sin * flip, cos, uniform(-reach, reach)], 1)], 1)
    grid = F.affine_grid(theta, (b, 1, crop, crop), align_corners=False)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = out.mean((1, 2, 3), keepdim=True)
    out = (out - mean) * uniform(1 - contrast, 1 + contrast)[:, None, None, None] + mean
    out = (out + uniform(-brightness, brightness)[:, None, None, None]).clamp_(0, 1)
    if erase > 0:
        area = uniform(0.02, 0.25) * crop * crop
        aspect = torch.exp(uniform(math.log(0.3), math.log(1 / 0.3)))
        h = (area * aspect).sqrt().clamp(1, crop)
        w = (area / aspect).sqrt().clamp(1, crop)
        y0, x0 = uniform(0, 1) * (crop - h), uniform(0, 1) * (crop - w)
        ys = torch.arange(crop, device=dev).view(1, crop, 1)
        xs = torch.arange(crop, device=dev).view(1, 1, crop)
        box = ((ys >= y0.view(-1, 1, 1)) & (ys < (y0 + h).view(-1, 1, 1))
               & (xs >= x0.view(-1, 1, 1)) & (xs < (x0 + w).view(-1, 1, 1)))
        box &= (uniform(0, 1) < erase).view(-1, 1, 1)
        noise = torch.rand(out.shape, device=dev, generator=generator)
        out = torch.where(box.unsqueeze(1), noise, out)
    return out


def ten_crops(x, crop):
    """The four corner crops, the centre crop and their mirror images.

    Args:
        x: ``(B, 1, 48, 48)`` float32.

    Returns:
        list of ten ``(B, 1, crop, crop)`` tensors.
    """
    m, c = SIDE - crop, (SIDE - crop) // 2
    views = [x[..., i:i + crop, j:j + crop] for i, j in ((0, 0), (0, m), (m, 0), (m, m), (c, c))]
    return views + [v.flip(-1) for v in views]


@torch.no_grad()
def predict_logits(model, images, crop, mode, batch=1024):
    """PublicTest logits ``(N, 7)`` float32 on the CPU.

    ``mode``: ``"full"`` (the 48x48 face), ``"flip"`` (mean of the face and
    its mirror image), ``"centre"`` (the centre crop), ``"centreflip"`` (the
    centre crop and its mirror image) or ``"tencrop"`` (mean over ``ten_crops``).
    """
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(dev).float().div(255).unsqueeze(1)
        c = (SIDE - crop) // 2
        centre = x[..., c:c + crop, c:c + crop]
        views = {"full": [x], "flip": [x, x.flip(-1)], "centre": [centre],
                 "centreflip": [centre, centre.flip(-1)], "tencrop": ten_crops(x, crop)}[mode]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = torch.stack([model(v.contiguous(memory_format=torch.channels_last)).float()
                                  for v in views]).mean(0)
        outs.append(logits.cpu())
    return torch.cat(outs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m train.torch_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="fer2013.csv(.gz), or an .npz with x, y, xv, yv")
    p.add_argument("--ferplus", help="fer2013new.csv(.gz): FER+ votes for --soft-weight")
    p.add_argument("--soft-weight", type=float, default=0.0, metavar="A",
                   help="share of the FER+ vote distribution in each target (default 0)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--crop", type=int, default=40, help="training crop side in pixels (default 40)")
    p.add_argument("--epochs", type=int, default=300, help="at most this many epochs (default 300)")
    p.add_argument("--seconds", type=float, default=0,
                   help="time budget for training; 0: run --epochs (default 0)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--class-weights", choices=("none", "sqrt"), default="none",
                   help="sqrt: weigh each face's loss by (n_max / n_class) ** 0.5, as python -m train does")
    p.add_argument("--erase", type=float, default=0.5, help="random-erasing probability")
    p.add_argument("--ema", type=float, default=0.999, help="weight EMA decay per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="use only the first N Training rows (tests)")
    p.add_argument("--out", required=True, help="folder for NAME.npz")
    p.add_argument("--log", help="JSON-lines log (default OUT/NAME.log); also printed")
    p.add_argument("--name", default=None, help="run name (default w{width}c{crop}s{seed})")
    args = p.parse_args(argv)
    if args.soft_weight and not args.ferplus:
        p.error("--soft-weight needs --ferplus fer2013new.csv(.gz)")
    if not 0 <= args.soft_weight <= 1:
        p.error(f"--soft-weight must be in [0, 1], got {args.soft_weight}")
    if not 8 <= args.crop <= SIDE:
        p.error(f"--crop must be 8-{SIDE} pixels, got {args.crop}")
    return args


def main(argv=None):
    args = parse_args(argv)
    name = args.name or f"w{args.width}c{args.crop}s{args.seed}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.log or out / f"{name}.log", "a", buffering=1)

    def log(**items):
        line = json.dumps({"run": name, "t": round(time.monotonic() - start, 1), **items})
        print(line, flush=True)
        log_file.write(line + "\n")

    start = time.monotonic()
    torch.manual_seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    try:
        x, y, xv, yv = load_arrays(args.data)
    except (OSError, KeyError, ValueError) as exc:  # train.data.DataError is a ValueError
        sys.exit(f"error: cannot read {args.data}: {exc}")
    n_train = len(y)
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    targets = np.eye(7, dtype=np.float32)[y]
    if args.soft_weight > 0:
        try:
            dist = load_ferplus_votes(args.ferplus, "Training", n_train)[:len(y)]
        except (OSError, KeyError, ValueError) as exc:
            sys.exit(f"error: cannot read the FER+ votes {args.ferplus}: {exc}")
        has = dist.sum(1, keepdims=True) > 0
        targets = np.where(has, (1 - args.soft_weight) * targets + args.soft_weight * dist, targets)
    if args.label_smoothing:
        targets = targets * (1 - args.label_smoothing) + args.label_smoothing / 7
    weights = np.ones(len(y), np.float32)
    if args.class_weights == "sqrt":
        counts = np.bincount(y, minlength=7).astype(np.float32)
        weights = np.sqrt(counts.max() / np.maximum(counts, 1))[y]
        weights /= weights.mean()
    x_dev, t_dev = torch.from_numpy(x).to(dev), torch.from_numpy(targets).to(dev)
    w_dev = torch.from_numpy(weights).to(dev)
    xv_t, yv_t = torch.from_numpy(xv), torch.from_numpy(yv)

    model = FerVGG(args.width).to(dev).to(memory_format=torch.channels_last)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    steps = len(x) // args.batch_size
    warmup, epochs = 2, args.epochs
    log(event="start", device=str(dev), gpu=torch.cuda.get_device_name() if dev.type == "cuda" else None,
        train=len(x), public_test=len(xv), args=vars(args))

    def lr_at(epoch, step):
        t = epoch + step / steps
        if t < warmup:
            return args.lr * (0.1 + 0.9 * t / warmup)
        return 0.5 * args.lr * (1 + math.cos(math.pi * min(1.0, (t - warmup) / max(1, epochs - warmup))))

    epoch = 0
    while epoch < epochs:
        t0 = time.monotonic()
        model.train()
        order = torch.randperm(len(x), device=dev, generator=gen)
        total = 0.0
        for step in range(steps):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch, step)
            batch = augment(x_dev[idx], args.crop, gen, erase=args.erase)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(batch.contiguous(memory_format=torch.channels_last)).float()
            loss = (-(t_dev[idx] * F.log_softmax(logits, 1)).sum(1) * w_dev[idx]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(model)
            total += loss.detach()
        epoch += 1
        seconds = time.monotonic() - t0
        if epoch == warmup and args.seconds:
            left = args.seconds - (time.monotonic() - start)
            epochs = max(warmup + 1, min(args.epochs, warmup + int(left / seconds)))
            planned_at = time.monotonic()
            log(event="plan", epoch_seconds=round(seconds, 2), epochs=epochs)
        if epoch % max(1, epochs // 10) == 0 or epoch == epochs:
            acc = {f"public_test_{mode}": round((predict_logits(model, xv_t, args.crop, mode).argmax(1) == yv_t)
                                                .float().mean().item(), 4) for mode in ("full", "centre")}
            log(event="epoch", epoch=epoch, loss=round(float(total) / steps, 4), lr=round(lr_at(epoch, 0), 5),
                epoch_seconds=round(seconds, 2), **acc)
            if epoch < epochs and epoch % max(1, epochs // 4) < max(1, epochs // 10):
                export(out / f"{name}.npz", model, xv_t, args, epoch, {})
            if args.seconds and epoch > warmup and epoch < epochs:
                # Evaluations, exports and a busier GPU cost time: shorten the schedule to fit.
                per_epoch = (time.monotonic() - planned_at) / (epoch - warmup)
                fit = epoch + int((args.seconds - (time.monotonic() - start)) / per_epoch)
                if fit < epochs:
                    epochs = max(epoch + 1, fit)
                    log(event="replan", epochs=epochs, epoch_seconds=round(per_epoch, 2))

    results = {}
    for which, net in (("raw", model), ("ema", ema.module)):
        for mode in ("full", "flip", "centre", "centreflip", "tencrop"):
            logits = predict_logits(net, xv_t, args.crop, mode)
            results[f"{which}_{mode}"] = round((logits.argmax(1) == yv_t).float().mean().item(), 4)
    score = {w: max(results[f"{w}_full"], results[f"{w}_centre"]) for w in ("raw", "ema")}
    best = "ema" if score["ema"] >= score["raw"] else "raw"
    log(event="done", epochs=epochs, kept=best, **results)
    export(out / f"{name}.npz", ema.module if best == "ema" else model, xv_t, args, epochs,
           dict(results, kept=best))


def export(path, model, xv_t, args, epochs, results):
    """Write the weights in Keras layout (kernels rounded to float16 to halve the file).

    The file also holds ``meta`` (JSON: arguments, epochs, PublicTest
    accuracies), ``public_logits`` ``(N, 7)`` float32 for the whole face, the
    centre crop and the ten crops, computed with the rounded weights by
    ``predict_logits`` (float32 on a CPU; under bfloat16 autocast on a GPU,
    stored as float32), and ``check_logits`` for the first 256 PublicTest
    faces, computed in float32 without autocast, which
    ``train.import_weights`` compares against Keras.
    """
    weights = keras_weights(model)
    arrays = {k: (v.astype(np.float16) if v.ndim > 1 else v) for k, v in weights.items()}
    clone = FerVGG(args.width)
    state = {}
    convs = [n for n, m in clone.features.named_children() if isinstance(m, nn.Conv2d)]
    bns = [n for n, m in clone.features.named_children() if isinstance(m, nn.BatchNorm2d)]
    for i, (c, b) in enumerate(zip(convs, bns)):
        key = f"block{i // 2 + 1}_conv{i % 2 + 1}/0"
        state[f"features.{c}.weight"] = torch.from_numpy(arrays[key].astype(np.float32)).permute(3, 2, 0, 1)
        bn = key.replace("conv", "bn")[:-2]
        for j, field in enumerate(("weight", "bias", "running_mean", "running_var")):
            state[f"features.{b}.{field}"] = torch.from_numpy(arrays[f"{bn}/{j}"])
        state[f"features.{b}.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.from_numpy(arrays["predictions/0"].astype(np.float32)).t()
    state["fc.bias"] = torch.from_numpy(arrays["predictions/1"])
    clone.load_state_dict(state)
    clone.eval()
    dev = next(model.parameters()).device
    clone.to(dev)
    with torch.no_grad():
        x = xv_t[:256].to(dev).float().div(255).unsqueeze(1)
        check = clone(x).float().cpu().numpy()
    meta = dict(args=vars(args), epochs=epochs, width=args.width, **results)
    tmp = Path(str(path) + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), check_logits=check,
             **{f"public_logits_{mode}": predict_logits(clone, xv_t, args.crop, mode).numpy()
                for mode in ("full", "centre", "centreflip", "tencrop")},
             **{k.replace("/", "__"): v for k, v in arrays.items()})
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
