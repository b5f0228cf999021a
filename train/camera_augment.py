"""Training views of a face as the served path sees it: NumPy and OpenCV, no framework.

The server cuts each face from a camera frame with a Haar box, shrinks it to
48x48 and classifies it.  Compared with a FER2013 face that crop is often
blurrier, lower in resolution before it was scaled, JPEG-compressed, lit
differently, noisier, tilted, and boxed a little off-centre or at another
scale (the Haar box moves by about 10% between neighbouring frames).  Each
function here imitates one of those on a batch ``(N, 48, 48)`` uint8 and
returns a new batch of the same shape and dtype; each face is changed with
probability ``p``, so the expression, and so the label, is kept.
``camera_views`` applies them all in turn.
"""
import cv2
import numpy as np

SIDE = 48


def _chosen(rng, n, p):
    return np.flatnonzero(rng.random(n) < p)


def geometry(faces, rng, rotation=15.0, shift=0.12, scale=0.12, flip=0.5):
    """Rotate, shift, rescale and mirror each face, as a Haar box varies.

    Args:
        faces: ``(N, 48, 48)`` uint8.
        rng: ``numpy.random.Generator``.
        rotation: largest rotation in degrees (uniform in +-rotation).
        shift: largest shift as a fraction of the side, in x and y.
        scale: largest change of scale as a fraction (uniform in 1 +- scale).
        flip: probability of a horizontal mirror.

    Returns:
        ``(N, 48, 48)`` uint8; edges filled by reflection.
    """
    out = np.empty_like(faces)
    n = len(faces)
    angles = rng.uniform(-rotation, rotation, n)
    scales = rng.uniform(1 - scale, 1 + scale, n)
    shifts = rng.uniform(-shift, shift, (n, 2)) * SIDE
    flips = rng.random(n) < flip
    centre = ((SIDE - 1) / 2, (SIDE - 1) / 2)
    for i, face in enumerate(faces):
        m = cv2.getRotationMatrix2D(centre, float(angles[i]), float(scales[i]))
        m[:, 2] += shifts[i]
        src = face[:, ::-1] if flips[i] else face
        out[i] = cv2.warpAffine(np.ascontiguousarray(src), m, (SIDE, SIDE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101)
    return out


def resolution_loss(faces, rng, low=24, high=32, p=0.3):
    """Shrink a face to ``low``-``high`` pixels (area average) and enlarge it back (bilinear).

    Imitates a face that was under ``high`` pixels in the camera frame.

    Returns:
        ``(N, 48, 48)`` uint8.
    """
    out = faces.copy()
    for i in _chosen(rng, len(faces), p):
        side = int(rng.integers(low, high + 1))
        small = cv2.resize(faces[i], (side, side), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(small, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
    return out


def blur(faces, rng, max_sigma=1.2, p=0.25):
    """Gaussian blur with sigma uniform in (0.3, ``max_sigma``) pixels: defocus and motion.

    Returns:
        ``(N, 48, 48)`` uint8.
    """
    out = faces.copy()
    for i in _chosen(rng, len(faces), p):
        out[i] = cv2.GaussianBlur(faces[i], (0, 0), float(rng.uniform(0.3, max_sigma)))
    return out


def jpeg(faces, rng, low=25, high=85, p=0.3):
    """JPEG-compress each chosen face at a quality uniform in [``low``, ``high``] and decode it.

    Returns:
        ``(N, 48, 48)`` uint8 with 8x8-block artefacts.
    """
    out = faces.copy()
    for i in _chosen(rng, len(faces), p):
        quality = int(rng.integers(low, high + 1))
        ok, data = cv2.imencode(".jpg", faces[i], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out[i] = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    return out


def gamma_contrast(faces, rng, gamma=(0.6, 1.6), contrast=0.3, brightness=0.1, p=0.8):
    """Lighting: a gamma curve, then contrast about the face's mean and a brightness offset.

    Args:
        gamma: range of the exponent (log-uniform), applied to pixels in [0, 1].
        contrast: largest relative change of contrast.
        brightness: largest offset as a fraction of the full range.

    Returns:
        ``(N, 48, 48)`` uint8.
    """
    out = faces.copy()
    chosen = _chosen(rng, len(faces), p)
    if len(chosen):
        x = faces[chosen].astype(np.float32) / 255
        g = np.exp(rng.uniform(np.log(gamma[0]), np.log(gamma[1]), len(chosen)))[:, None, None]
        x = x ** g
        mean = x.mean((1, 2), keepdims=True)
        c = rng.uniform(1 - contrast, 1 + contrast, len(chosen))[:, None, None]
        b = rng.uniform(-brightness, brightness, len(chosen))[:, None, None]
        x = (x - mean) * c + mean + b
        out[chosen] = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    return out


def noise(faces, rng, max_sigma=8.0, p=0.25):
    """Gaussian sensor noise with a standard deviation uniform in (1, ``max_sigma``) grey levels.

    Returns:
        ``(N, 48, 48)`` uint8.
    """
    out = faces.copy()
    chosen = _chosen(rng, len(faces), p)
    if len(chosen):
        sigma = rng.uniform(1, max_sigma, len(chosen))[:, None, None]
        x = faces[chosen].astype(np.float32) + rng.standard_normal((len(chosen), SIDE, SIDE)) * sigma
        out[chosen] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return out


#: The transforms ``camera_views`` applies, in order: the camera's optics and sensor, then the
#: box, then compression (the server decodes a JPEG or a compressed video frame).
TRANSFORMS = {"gamma_contrast": gamma_contrast, "blur": blur, "noise": noise,
              "resolution_loss": resolution_loss, "geometry": geometry, "jpeg": jpeg}


def camera_views(faces, rng, skip=()):
    """Every transform in ``TRANSFORMS`` (except those named in ``skip``) in turn.

    Args:
        faces: ``(N, 48, 48)`` uint8.
        rng: ``numpy.random.Generator``.
        skip: names of transforms to leave out (to measure what each moves).

    Returns:
        ``(N, 48, 48)`` uint8.
    """
    for name, transform in TRANSFORMS.items():
        if name not in skip:
            faces = transform(faces, rng)
    return faces


def random_crop(faces, rng, crop):
    """A random ``crop`` x ``crop`` window of each face: ``(N, crop, crop)`` uint8."""
    n, limit = len(faces), SIDE - crop
    ys, xs = rng.integers(0, limit + 1, n), rng.integers(0, limit + 1, n)
    return np.stack([f[y:y + crop, x:x + crop] for f, y, x in zip(faces, ys, xs)])
