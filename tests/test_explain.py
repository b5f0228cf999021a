"""``explain.GradCam`` and ``?explain=1`` on ``/api/predict`` and ``/api/faces``."""
import base64
import io

import cv2
import keras
import numpy as np
import pytest

from fer_server.model.classifier import Classifier
from fer_server.config import Config
from fer_server.model.gradcam import GradCam, heatmap_png, last_conv_layer


def decode_data_url(url):
    assert url.startswith("data:image/png;base64,")
    png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.imdecode(png, cv2.IMREAD_UNCHANGED)


def known_model():
    """4x4x1 input -> 1x1 conv to (x, -x) -> mean -> Dense(2, softmax) with weights chosen by hand.

    With A^0 = x, A^1 = -x and logit_c = sum_k W[k, c] mean(A^k) + b_c, the
    gradient dlogit_c / dA^k_ij is W[k, c] / 16, so Grad-CAM of class c is
    ReLU((W[0, c] - W[1, c]) x / 16): x / max(x) once scaled when
    W[0, c] > W[1, c], and zero otherwise.
    """
    inputs = keras.Input((4, 4, 1))
    conv = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")
    dense = keras.layers.Dense(2, activation="softmax", name="out")
    outputs = dense(keras.layers.GlobalAveragePooling2D()(conv(inputs)))
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.array([1.0, -1.0], np.float32).reshape(1, 1, 1, 2)])
    dense.set_weights([np.array([[2.0, -1.0], [0.5, 3.0]], np.float32), np.array([0.1, -0.2], np.float32)])
    return model


def test_grad_cam_of_a_model_worked_out_by_hand():
    classifier = Classifier(known_model(), ["up", "down"], backend="tf.function")
    cam = GradCam(classifier)
    assert cam.layer.name == "conv"
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1) / 16.0
    up, down = cam.heatmaps(np.concatenate([x, x]), [0, 1])
    np.testing.assert_allclose(up, x[0, :, :, 0] / x.max(), atol=1e-6)  # W[0,0] - W[1,0] = 1.5 > 0
    np.testing.assert_array_equal(down, np.zeros((4, 4)))  # W[0,1] - W[1,1] = -4 < 0


def test_the_last_conv_block_of_the_shipped_architecture_is_explained(classifier):
    assert last_conv_layer(classifier.model).name == "block4_relu2"  # 6x6, before the last pooling


def test_the_shipped_model_is_explained_on_its_served_score(faces):
    """Grad-CAM differentiates the served score (a network's logits, or an ensemble's log probabilities):
    its softmax is what the shipped model outputs; every member's last conv block is explained."""
    from fer_server.config import Config
    from fer_server.model.gradcam import member_prefix

    config = Config()
    shipped = Classifier.from_files(config.model_path, config.weights_path, backend="tf.function")
    cam = GradCam(shipped)
    prefixes = sorted({member_prefix(layer.name) for layer in shipped.model.layers} - {""}) or [""]
    assert [layer.name for layer in cam.layers] == [p + "block4_relu2" for p in prefixes]
    crops = np.stack([faces[name] for name in sorted(faces)]).astype(np.float32)[..., None] / 255.0
    logits = cam.scores(crops)
    served = shipped.model.predict(shipped.model_input(crops), verbose=0)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), served, atol=1e-5)
    maps = cam.heatmaps(crops, served.argmax(1))
    assert maps.shape == (7, 48, 48) and all(m.max() == pytest.approx(1.0) for m in maps)
    names = [layer.name for layer in shipped.model.layers]
    borders = [int(shipped.model.get_layer(p + "crop").cropping[0][0]) if p + "crop" in names else 0
               for p in prefixes]
    b = min(borders)
    if b:  # every network sees a centre crop: nothing outside it is explained
        assert not maps[:, :b].any() and not maps[:, -b:].any() and not maps[:, :, :b].any()


def test_an_ensemble_member_is_explained_inside_the_border_it_crops(faces):
    from train.model import build_ensemble

    keras.utils.set_random_seed(0)
    model = build_ensemble([(4, 0), (4, 6)])
    classifier = Classifier(model, [f"c{i}" for i in range(7)], backend="tf.function")
    assert [layer.name for layer in GradCam(classifier).layers] == ["m0_block4_relu2", "m1_block4_relu2"]
    cam = GradCam(classifier, layer="m1_block4_relu2")  # the last member alone; it crops 6 pixels
    crops = np.stack([faces[name] for name in ("Happy", "Sad", "Angry")]).astype(np.float32)[..., None] / 255.0
    # Every class of every face: an untrained member's map for one class may be zero everywhere
    # (ReLU of a sum with random signs), which says nothing about where the border lies.
    maps = cam.heatmaps(np.repeat(crops, 7, axis=0), list(range(7)) * 3).reshape(3, 7, 48, 48)
    outside = np.ones((48, 48), bool)
    outside[6:-6, 6:-6] = False
    assert maps[:, :, outside].max() == 0.0
    assert (maps[:, :, 6:-6, 6:-6].max(axis=(1, 2, 3)) > 0.0).all()  # each face has a map inside the border
    # by default both members: m0 sees the whole face, so the served score's map reaches the border ring
    both = GradCam(classifier).heatmaps(np.repeat(crops, 7, axis=0), list(range(7)) * 3)
    assert both[:, outside].max() > 0.0


def test_heat_maps_have_the_crop_shape_and_differ_between_faces(classifier, faces):
    cam = GradCam(classifier)
    crops = np.stack([faces["Happy"], faces["Surprise"]]).astype(np.float32)[..., None] / 255.0
    maps = cam.heatmaps(crops, [3, 5])
    assert maps.shape == (2, 48, 48) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.abs(maps[0] - maps[1]).mean() > 0.01


def test_heatmap_png_is_rgba_with_alpha_following_the_map():
    cam = np.zeros((48, 48), np.float32)
    cam[:, 24:] = 1.0
    image = cv2.imdecode(np.frombuffer(heatmap_png(cam), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (48, 48, 4)
    assert image[0, 0, 3] == 0 and image[0, 47, 3] == 220
    assert tuple(image[0, 47, :3]) == tuple(cv2.applyColorMap(np.uint8([[255]]), cv2.COLORMAP_JET)[0, 0])


@pytest.fixture
def app(clip, tiny_model_files, make_app):
    model_path, weights_path = tiny_model_files
    return make_app(Config(source=str(clip), model_path=model_path, weights_path=weights_path))


def two_faces_png(faces):
    canvas = np.full((250, 480), 170, np.uint8)
    for i, name in enumerate(("Happy", "Surprise")):
        x = 60 + i * 210
        canvas[50:200, x:x + 150] = cv2.resize(faces[name], (150, 150), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".png", canvas)[1].tobytes()


def test_predict_explains_each_face_only_when_asked(app, faces):
    client = app.test_client()
    photo = two_faces_png(faces)
    plain = client.post("/api/predict", data={"image": (io.BytesIO(photo), "p.png")}).json
    assert len(plain["faces"]) == 2 and all("explanation" not in f for f in plain["faces"])
    answer = client.post("/api/predict?explain=1", data={"image": (io.BytesIO(photo), "p.png")}).json
    maps = []
    for face in answer["faces"]:
        assert face["explanation"]["class"] == face["label"]
        maps.append(decode_data_url(face["explanation"]["heatmap"]))
        assert maps[-1].shape == (48, 48, 4)
    assert np.abs(maps[0].astype(int) - maps[1].astype(int)).mean() > 1


def test_live_faces_explained(app):
    camera = app.extensions["camera"]
    frames = camera.frames()
    frame = next(f for f in frames if f.faces)
    answer = app.test_client().get("/api/faces?explain=1").json
    frames.close()
    assert answer["frame"] >= frame.seq and len(answer["faces"]) == 1
    assert decode_data_url(answer["faces"][0]["explanation"]["heatmap"]).shape == (48, 48, 4)
