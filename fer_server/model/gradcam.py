"""Grad-CAM heat maps: which pixels of a face crop drove the predicted expression.

Gradient-weighted Class Activation Mapping (Selvaraju et al. 2017,
"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV): with ``A`` the feature maps of the last convolutional
block and ``y_c`` the class score before the softmax, each channel ``k`` is
weighted by ``alpha_k = mean_ij dy_c / dA_ij^k`` and the map is
``ReLU(sum_k alpha_k A^k)``, upsampled to the crop and scaled to [0, 1].

The server's classifier may run through TensorFlow Lite, which has no
gradients, so ``GradCam`` works on the Keras model (``Classifier.model``)
with ``tf.GradientTape``.  It is only computed when a request asks for it
(``?explain=1``), so the stream's cost per frame is unchanged.
"""
import base64
import re
import threading

import cv2
import numpy as np


def last_conv_layer(model, prefix=""):
    """The last layer (whose name starts with ``prefix``) with a 4-D ``(N, H, W, C)`` output that is
    not a pooling or cropping layer: the last conv block (of that ensemble member).

    Raises:
        ValueError: the model has no such layer.
    """
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None) is not None and tuple(layer.output.shape)
        if (shape and len(shape) == 4 and layer.name.startswith(prefix) and not layer.name.startswith("input")
                and not any(kind in type(layer).__name__ for kind in ("Pooling", "Cropping"))):
            return layer
    raise ValueError(f"model {model.name} has no convolutional layer to explain")


def member_prefix(name):
    """``"m1_"`` for a layer of member 1 of ``train.model.build_ensemble``, else ``""``."""
    match = re.match(r"m\d+_", name)
    return match.group(0) if match else ""


class GradCam:
    """Grad-CAM of the score a ``model.classifier.Classifier`` serves.

    The class score is the served one: for a single network the logit (the
    input of a final ``softmax`` ``Activation`` layer, or the pre-activation
    of a final ``Dense`` layer with a softmax); for an ensemble
    (``train.model.build_ensemble``, members' probabilities averaged) the
    log of the served probability; for other models the output itself.  By
    default every member's last convolutional block is explained: each
    member's Grad-CAM combination of its channels (before the ReLU) is
    resized onto the part of the face that member sees (inside its
    ``m{i}_crop`` border, zero outside), the members' maps are added, and the
    ReLU of the sum is the map.  For one network this is Selvaraju et al.'s
    Grad-CAM exactly.

    Args:
        classifier: the ``Classifier`` (its ``model``, ``input_shape``,
            ``labels`` and ``model_input`` are used).
        layer: name of one layer to explain instead (the gradient is still
            the served score's).

    Raises:
        ValueError: no layer to explain.
    """

    def __init__(self, classifier, layer=None):
        import keras
        import tensorflow as tf

        model = classifier.model
        self.classifier = classifier
        names = {each.name for each in model.layers}
        prefixes = sorted({member_prefix(each.name) for each in model.layers} - {""})
        if layer:
            layers = [model.get_layer(layer)]
        elif prefixes:
            layers = [last_conv_layer(model, prefix) for prefix in prefixes]
        else:
            layers = [last_conv_layer(model)]
        #: The explained layers: one per ensemble member, or the one network's last conv block.
        self.layers = layers
        self.layer = layers[-1]
        self._borders = []
        for each in layers:
            crop = member_prefix(each.name) + "crop"
            self._borders.append(tuple(map(tuple, model.get_layer(crop).cropping)) if crop in names
                                 else ((0, 0), (0, 0)))
        last = model.layers[-1]
        activation = getattr(getattr(last, "activation", None), "__name__", None)
        self._dense, self._log = None, False
        if isinstance(last, keras.layers.Activation) and activation == "softmax":
            score = last.input  # the logits
        elif isinstance(last, keras.layers.Dense) and activation == "softmax":
            score, self._dense = last.input, last  # logits = input @ kernel + bias
        else:
            score = model.outputs[0]
            self._log = bool(prefixes)  # an ensemble's mean of probabilities: explain log p
        self._model = keras.Model(model.inputs, [*(each.output for each in layers), score])
        self._lock = threading.Lock()
        self._maps = tf.function(self._grad_cam, input_signature=[
            tf.TensorSpec([None, *classifier.input_shape], tf.float32), tf.TensorSpec([None], tf.int32)])

    def _score(self, score):
        import tensorflow as tf

        score = tf.cast(score, tf.float32)
        if self._dense is not None:
            score = tf.matmul(score, tf.cast(self._dense.kernel, tf.float32)) + tf.cast(self._dense.bias, tf.float32)
        if self._log:
            score = tf.math.log(tf.maximum(score, 1e-12))
        return score

    def _grad_cam(self, x, classes):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            *features, score = self._model(x, training=False)
            features = [tf.cast(f, tf.float32) for f in features]
            chosen = tf.gather(self._score(score), classes, batch_dims=1)
        grads = tape.gradient(chosen, features)
        return [tf.reduce_sum(tf.reduce_mean(g, axis=(1, 2), keepdims=True) * f, axis=-1)
                for g, f in zip(grads, features)]

    def scores(self, crops):
        """The served class scores Grad-CAM differentiates, ``(N, C)`` float32, for crops in [0, 1].

        Logits for a single network, log probabilities for an ensemble: in
        both cases their softmax is what ``Classifier.model`` outputs.
        """
        import tensorflow as tf

        x = tf.convert_to_tensor(self.classifier.model_input(np.asarray(crops)), tf.float32)
        return self._score(self._model(x, training=False)[-1]).numpy()

    def heatmaps(self, crops, classes):
        """Grad-CAM maps of ``crops`` for ``classes``.

        Args:
            crops: ``(N, H, W, C)`` float32 in [0, 1], as ``Classifier.predict`` takes them.
            classes: ``N`` class indices (the predicted ones).

        Returns:
            ``(N, H, W)`` float32 in [0, 1], ``(H, W)`` the model's input
            size; each map divided by its maximum (all zeros where no
            pixel counts for the class).
        """
        height, width = self.classifier.input_shape[:2]
        if len(crops) == 0:
            return np.zeros((0, height, width), np.float32)
        x = self.classifier.model_input(np.asarray(crops))
        with self._lock:
            per_layer = [m.numpy() for m in self._maps(x, np.asarray(classes, np.int32))]
        out = np.zeros((len(crops), height, width), np.float32)
        for maps, ((top, bottom), (left, right)) in zip(per_layer, self._borders):
            seen = (width - left - right, height - top - bottom)
            for i, cam in enumerate(maps):
                out[i, top:height - bottom, left:width - right] += cv2.resize(cam, seen, interpolation=cv2.INTER_LINEAR)
        out = np.maximum(out, 0.0)
        peaks = out.max(axis=(1, 2), keepdims=True)
        return np.divide(out, peaks, out=np.zeros_like(out), where=peaks > 0).astype(np.float32)

    def explain(self, faces):
        """``{"class": name, "heatmap": PNG data URL}`` for each ``vision.frames.Face`` (None without a crop).

        The PNG is ``heatmap_png`` of the face's map for its predicted class.
        """
        known = [(i, f) for i, f in enumerate(faces) if f.crop is not None]
        result = [None] * len(faces)
        if not known:
            return result
        labels = list(self.classifier.labels)
        classes = [labels.index(f.label) for _, f in known]
        maps = self.heatmaps(np.stack([f.crop for _, f in known]), classes)
        for (i, face), cam in zip(known, maps):
            result[i] = {"class": face.label, "heatmap": png_data_url(heatmap_png(cam))}
        return result


def heatmap_png(cam):
    """An ``(H, W)`` map in [0, 1] as an RGBA PNG (bytes): the jet colour map, alpha rising with the value."""
    level = np.round(np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8)
    bgra = cv2.cvtColor(cv2.applyColorMap(level, cv2.COLORMAP_JET), cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = (level.astype(np.uint16) * 220 // 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", bgra)
    if not ok:
        raise ValueError("OpenCV could not encode the heat map as PNG")
    return png.tobytes()


def png_data_url(png):
    """``data:image/png;base64,...`` of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
