"""Accuracy through the detector: does the server's crop match what the model learned?

    python -m train.detector_accuracy --data path/to/fer2013.csv.gz --margins 0,0.05,0.1,0.15,0.2

FER2013 faces are tightly framed crops; the server instead crops the Haar
cascade's bounding box.  For each PublicTest face this enlarges it (bicubic,
to ``--side`` pixels), places it on a plain grey canvas, runs the server's
``FaceDetector`` with the server's settings, crops the found box with each
margin using the server's ``crop_faces`` and classifies it.  It prints the
plain accuracy, the share of faces found, and per margin the accuracy over
the faces found and over all faces (a missed face counts as wrong).
"""
import argparse
import json
import sys

import cv2
import numpy as np

from fer_server.config import join_input_range_argv
from train.data import load_fer2013_csv


def main(argv=None):
    from fer_server.model.classifier import Classifier
    from fer_server.config import BACKENDS, Config
    from fer_server.vision.detector import FaceDetector
    from fer_server.vision.frames import crop_faces
    from train.scoring import predict

    defaults = Config()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="PublicTest")
    p.add_argument("--model", default=str(defaults.model_path))
    p.add_argument("--weights", help="classic HDF5 weights of a JSON --model (default: model_weights.h5 beside "
                                     "it); none for a whole-model .h5/.keras")
    p.add_argument("--input-range", choices=("0,1", "-1,1", "0,255"), metavar="0,1|-1,1|0,255",
                   help="the model's input scaling (default: from model.json, else 0,1)")
    p.add_argument("--classes", help="comma-separated class names in output order (FER2013 names)")
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                   help="classifier inference path (default: the server's, %(default)s)")
    p.add_argument("--margins", default="0,0.05,0.1,0.15,0.2,0.25")
    p.add_argument("--side", type=int, default=144, help="face side on the canvas, pixels")
    p.add_argument("--pads", help="instead: the upload path (image_* settings, largest face) on the bare "
                                  "enlarged crop, no canvas, for each Config.image_pad in this list")
    p.add_argument("--canvas", action="store_true", help="with --pads: the face on a grey canvas, as below")
    p.add_argument("--image-min-side", type=int, default=defaults.image_min_side_px,
                   help="with --pads: Config.image_min_side_px (default: the server's, %(default)s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(join_input_range_argv(sys.argv[1:] if argv is None else argv))

    images, labels = load_fer2013_csv(args.data)[args.split]
    classifier = Classifier.from_files(args.model, args.weights, input_range=args.input_range,
                                       class_names=args.classes, backend=args.backend)
    if args.pads:
        result = bare_crops(classifier, images, labels, [float(v) for v in args.pads.split(",")], args.side,
                            args.canvas, args.image_min_side)
        if args.json:
            print(json.dumps(result))
        return
    detector = FaceDetector(defaults.scale_factor, defaults.min_neighbors, defaults.min_face_px,
                            defaults.detect_width)
    plain = float((predict(classifier, images).argmax(1) == labels).mean())
    margins = [float(m) for m in args.margins.split(",")]
    side, pad = args.side, args.side // 2
    found_index, crops = [], {m: [] for m in margins}
    for i, face in enumerate(images):
        canvas = np.full((side + 2 * pad, side + 2 * pad), 128, np.uint8)
        canvas[pad:pad + side, pad:pad + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        boxes = detector.detect(canvas)
        if len(boxes) == 0:
            continue
        centre = np.array([pad + side / 2, pad + side / 2])
        box = min(boxes, key=lambda b: np.abs(b[:2] + b[2:] / 2 - centre).sum())  # the face, not a stray box
        found_index.append(i)
        for m in margins:
            crops[m].append(crop_faces(canvas, box[None], classifier.input_shape[:2], m)[0])
    found = np.array(found_index)
    result = {"n": int(len(images)), "plain_accuracy": round(plain, 4),
              "found": round(len(found) / len(images), 4), "margins": {}}
    print(f"{args.split}: {len(images)} faces; plain accuracy {plain:.4f}; "
          f"the detector found {len(found)} ({len(found) / len(images):.1%})")
    for m in margins:
        probs = classifier.predict(np.stack(crops[m])) if len(found) else np.zeros((0, 1))
        correct = int((probs.argmax(1) == labels[found]).sum()) if len(found) else 0
        result["margins"][str(m)] = {"accuracy_found": round(correct / max(1, len(found)), 4),
                                     "accuracy_all": round(correct / len(images), 4)}
        print(f"margin {m:.2f}: accuracy {correct / max(1, len(found)):.4f} on the faces found, "
              f"{correct / len(images):.4f} on all")
    if args.json:
        print(json.dumps(result))


def bare_crops(classifier, images, labels, pads, side=144, canvas=False, min_side_px=0):
    """Faces found and accuracy when each face is uploaded as a tight crop.

    Each ``(48, 48)`` face is enlarged (bicubic) to ``side`` pixels and given
    to the server's upload pipeline (``builders.build_pipeline(for_images=True)``)
    with ``Config.image_pad`` set to each of ``pads``; the largest face
    found is its answer, no face counts as wrong.  ``canvas`` puts the
    enlarged face in the middle of a grey canvas twice its side instead (a
    whole photo).  ``min_side_px`` is ``Config.image_min_side_px``: with
    ``side=48`` the faces are uploaded as they are and only the search
    enlarges them.

    Returns:
        ``{str(pad): {"found", "accuracy_all", "accuracy_found"}}`` (fractions).
    """
    from dataclasses import replace

    from fer_server.builders import build_pipeline
    from fer_server.config import Config

    result = {}
    for pad in pads:
        pipeline = build_pipeline(replace(Config(), image_pad=pad, image_min_side_px=min_side_px), classifier,
                                  for_images=True)
        found = correct = 0
        for face, label in zip(images, labels):
            big = face if side == face.shape[0] else cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
            if canvas:
                big = cv2.copyMakeBorder(big, side // 2, side // 2, side // 2, side // 2, cv2.BORDER_CONSTANT,
                                         value=128)
            faces = pipeline.faces_in_image(big)
            if faces:
                found += 1
                best = max(faces, key=lambda f: f.box[2] * f.box[3])
                correct += classifier.labels.index(best.label) == label
        result[str(pad)] = {"found": round(found / len(images), 4), "accuracy_all": round(correct / len(images), 4),
                            "accuracy_found": round(correct / max(1, found), 4)}
        print(f"image_pad {pad:.2f}: found {found}/{len(images)} ({found / len(images):.1%}); accuracy "
              f"{correct / len(images):.4f} on all, {correct / max(1, found):.4f} on the faces found", flush=True)
    return result


if __name__ == "__main__":
    main()
