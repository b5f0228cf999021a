import cv2
import numpy as np

from fer_server.model.files import FER2013_LABELS
from fer_server.vision.detector import FaceDetector
from fer_server.vision.frames import Face, crop_faces, draw_faces
from fer_server.vision.pipeline import FramePipeline


def read_frames(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def test_pipeline_on_clip_finds_and_labels_faces(clip, classifier):
    pipeline = FramePipeline(FaceDetector(), classifier)
    frames = read_frames(clip)
    assert len(frames) == 35
    with_face = 0
    for frame in frames:
        annotated, faces = pipeline.process(frame)
        assert annotated.shape == frame.shape and annotated.dtype == np.uint8
        with_face += bool(faces)
        for face in faces:
            x, y, w, h = face.box
            assert 0 <= x and 0 <= y and x + w <= frame.shape[1] and y + h <= frame.shape[0]
            assert w >= 40 and h >= 40
            assert face.label in FER2013_LABELS
            assert set(face.probabilities) == set(FER2013_LABELS)
            assert abs(sum(face.probabilities.values()) - 1) < 1e-4
            assert face.confidence == max(face.probabilities.values())
    assert with_face >= 30  # one face is on screen in every frame of the clip


def test_pipeline_draws_only_where_faces_are(clip, classifier):
    frame = read_frames(clip)[0]
    annotated, faces = FramePipeline(FaceDetector(), classifier).process(frame)
    assert len(faces) == 1
    changed = np.argwhere(np.any(annotated != frame, axis=2))
    x, y, w, h = faces[0].box
    assert changed[:, 1].min() >= x - 3 and changed[:, 1].max() <= x + w + 200
    assert changed[:, 0].min() >= y - 40 and changed[:, 0].max() <= y + h + 3


def test_empty_frame_has_no_face(classifier):
    pipeline = FramePipeline(FaceDetector(), classifier)
    annotated, faces = pipeline.process(np.full((240, 320, 3), 128, np.uint8))
    assert faces == [] and annotated.shape == (240, 320, 3)


def test_crop_faces_shape_range_and_edges():
    gray = np.tile(np.arange(100, dtype=np.uint8), (80, 1))
    boxes = np.array([[10, 10, 30, 30], [0, 0, 100, 80], [90, 70, 10, 10]])
    crops = crop_faces(gray, boxes, size=48, margin=0.25)
    assert crops.shape == (3, 48, 48, 1) and crops.dtype == np.float32
    assert 0.0 <= crops.min() and crops.max() <= 1.0
    # a margin past the frame edge replicates the edge instead of adding black
    assert crops[2].min() >= 80 / 255


def test_crop_without_margin_is_the_box():
    gray = np.zeros((100, 100), np.uint8)
    gray[20:68, 30:78] = 200
    crop = crop_faces(gray, np.array([[30, 20, 48, 48]]))
    assert np.allclose(crop, 200 / 255)


def test_face_json_is_plain_data():
    face = Face((np.int32(1), 2, 3, 4), "Happy", np.float32(0.5), {"Happy": np.float32(0.5)})
    data = face.to_json()
    assert data == {"id": None, "box": [1, 2, 3, 4], "label": "Happy", "confidence": 0.5,
                    "probabilities": {"Happy": 0.5}}
    assert all(type(v) is int for v in data["box"])


def test_draw_faces_writes_label_text():
    frame = np.zeros((200, 300, 3), np.uint8)
    draw_faces(frame, [Face((50, 60, 80, 80), "Surprise", 0.87, {})])
    assert frame[60:140, 50].any() and frame[20:60, 50:200].any()


def test_downscaled_detection_boxes_land_on_the_face(clip):
    frame = cv2.resize(read_frames(clip)[5], (960, 720))  # upscale so 480 px is a real downscale
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    full = FaceDetector().detect(gray)
    fast = FaceDetector(detect_width=480).detect(gray)
    assert len(full) == len(fast) == 1
    (x0, y0, w0, h0), (x1, y1, w1, h1) = full[0], fast[0]
    overlap_w = max(0, min(x0 + w0, x1 + w1) - max(x0, x1))
    overlap_h = max(0, min(y0 + h0, y1 + h1) - max(y0, y1))
    union = w0 * h0 + w1 * h1 - overlap_w * overlap_h
    assert overlap_w * overlap_h / union > 0.7  # intersection over union
