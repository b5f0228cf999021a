"""The CNN architecture trained by ``python -m train``.

A VGG-style network (Simonyan & Zisserman 2015) with batch normalisation
(Ioffe & Szegedy 2015) and global average pooling (Lin et al. 2014, "Network
in Network") in place of large dense layers: four blocks of two 3x3
convolutions, widths ``w, 2w, 4w, 8w``, each block halving the resolution.
This is the family Khaireddin & Chen (2021) tuned to 73.3% on FER2013; ours
is narrower so that it trains on a laptop CPU and classifies a face in
about a millisecond.
"""
import keras
from keras import layers

#: Augmentation ranges at ``python -m train --augment 1``: rotation in degrees; shift, zoom and
#: contrast as fractions (of the side, of the scale, of the contrast).  Horizontal flips always.
AUGMENTATION = {"rotation": 15, "shift": 0.10, "zoom": 0.15, "contrast": 0.30}


def build_augmentation(strength=1.0):
    """The training augmentation: flips, and the ``AUGMENTATION`` ranges times ``strength``.

    Args:
        strength: scale of the ranges; 0 keeps only the horizontal flips.

    Returns:
        A ``keras.Sequential`` taking ``(B, 48, 48, 1)`` float32 in [0, 1]
        and, with ``training=True``, returning randomly transformed images of
        the same shape (edges filled by reflection).
    """
    a = {k: strength * v for k, v in AUGMENTATION.items()}
    return keras.Sequential([layers.RandomFlip("horizontal")] + ([
        layers.RandomRotation(a["rotation"] / 360, fill_mode="reflect"),
        layers.RandomTranslation(a["shift"], a["shift"], fill_mode="reflect"),
        layers.RandomZoom(a["zoom"], fill_mode="reflect"),
        layers.RandomContrast(a["contrast"], value_range=(0.0, 1.0)),
    ] if strength > 0 else []), name="augment")


def build_model(num_classes=7, width=32, dropout=0.4, input_size=48, border=0):
    """Build the classifier.

    Args:
        num_classes: number of output classes (7 for FER2013).
        width: filters in the first block; later blocks use 2x, 4x, 8x.
        dropout: dropout rate before the final dense layer.
        input_size: side of the square grayscale input in pixels.
        border: pixels cropped from each side of the input first (a
            ``Cropping2D`` layer ``crop``): a network trained on random
            ``input_size - 2 * border`` crops sees the centre crop.

    Returns:
        An uncompiled ``keras.Model`` taking ``(N, input_size, input_size, 1)``
        float32 in [0, 1] and returning ``(N, num_classes)`` float32
        softmax probabilities.  Under a ``mixed_bfloat16`` policy the body
        computes in bfloat16 while the output layer stays float32.
    """
    inputs = keras.Input((input_size, input_size, 1), name="face")
    x = layers.Cropping2D(int(border), name="crop")(inputs) if border else inputs
    name = f"fer_vgg{width}" + (f"c{input_size - 2 * int(border)}" if border else "")
    return keras.Model(inputs, _vgg(x, num_classes, width, dropout), name=name)


def build_ensemble(members, num_classes=7, dropout=0.4, input_size=48, weights=None):
    """Several ``build_model`` networks in one graph, their probabilities averaged.

    Member ``i``'s layers are ``build_model``'s names prefixed ``m{i}_``; a
    member with a border first crops that many pixels from each side of the
    face (``Cropping2D``), the centre crop it was trained on (see
    ``train.torch_gpu``).  An ensemble of networks trained differently is
    more accurate than any one of them (Dietterich 2000; on FER2013,
    Pramerdorfer & Kampel 2016).

    Args:
        members: sequence of ``(width, border)``: first-block filters, and
            pixels cropped from each side (0 for none).
        weights: None for the plain mean (an ``Average`` layer), or one
            number > 0 per member: the output is ``sum(w_i * p_i) / sum(w)``,
            each member's probabilities scaled by a ``Rescaling`` layer
            ``m{i}_weight`` and summed by an ``Add`` layer.

    Returns:
        An uncompiled ``keras.Model``: ``(N, input_size, input_size, 1)``
        float32 in [0, 1] to ``(N, num_classes)`` float32, the (weighted)
        mean of the members' softmax probabilities (one member: its own).

    Raises:
        ValueError: ``weights`` has the wrong length or a weight that is not > 0.
    """
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(members) or not all(w > 0 for w in weights):
            raise ValueError(f"need one weight > 0 per member ({len(members)}), got {weights}")
    inputs = keras.Input((input_size, input_size, 1), name="face")
    outputs = []
    for i, (width, border) in enumerate(members):
        x = inputs
        if border:
            x = layers.Cropping2D(int(border), name=f"m{i}_crop")(x)
        outputs.append(_vgg(x, num_classes, width, dropout, prefix=f"m{i}_"))
    if len(outputs) == 1:
        output = outputs[0]
    elif weights is None:
        output = layers.Average(dtype="float32", name="predictions")(outputs)
    else:
        total = sum(weights)
        scaled = [layers.Rescaling(w / total, dtype="float32", name=f"m{i}_weight")(p)
                  for i, (w, p) in enumerate(zip(weights, outputs))]
        output = layers.Add(dtype="float32", name="predictions")(scaled)
    return keras.Model(inputs, output, name="fer_ensemble")


def _vgg(x, num_classes, width, dropout, prefix=""):
    for block, filters in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
        for conv in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              name=f"{prefix}block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"{prefix}block{block}_bn{conv}")(x)
            x = layers.ReLU(name=f"{prefix}block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(name=f"{prefix}block{block}_pool")(x)
    x = layers.GlobalAveragePooling2D(name=f"{prefix}gap")(x)
    x = layers.Dropout(dropout, name=f"{prefix}dropout")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=f"{prefix}predictions")(x)
