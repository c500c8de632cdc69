"""Measures the two candidate built-in animal models on the same photos, so the choice is recorded.

Candidates (both on the ImageNet EfficientNet-Lite0, 224 px, centre crop 0.875):
  mapping  - no training: ImageNet classes mapped a priori to the ten animals by their WordNet
             names (every dog breed -> dog, tabby/tiger/Persian/Siamese/Egyptian cat -> cat, ...);
             the class score is the sum (or the max) of the mapped ImageNet probabilities.
  head     - a linear head on the frozen 1280-d features, what `bestiary train --arch
             efficientnet-lite0` builds; estimated honestly by 5-fold cross-validation.
Photos: ../shared/data/animals10 (240) and, as photos from another source, the 1,000
validation photos of ../shared/data/cats_and_dogs_filtered (10-way prediction must say cat/dog).

Usage: python bench/default-model/compare.py   (needs: pip install onnxruntime==1.32.0 pillow numpy)
"""

import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

SHARED = os.environ.get("BESTIARY_SHARED", os.path.join(os.path.dirname(__file__), "../../../shared"))
MODEL = f"{SHARED}/models/efficientnet_lite0/efficientnet_lite0.onnx"
MAPPING = {
    "butterfly": [321, 322, 323, 324, 325, 326],
    "cat": [281, 282, 283, 284, 285],
    "chicken": [7, 8],
    "cow": [345, 346],
    "dog": list(range(151, 269)),
    "elephant": [101, 385, 386],
    "horse": [339],
    "sheep": [348, 349],
    "spider": [72, 73, 74, 75, 76, 77, 815],
    "squirrel": [335],
}
CLASSES = sorted(MAPPING)


def preprocess(path):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)


def run(session, paths):
    logits, features = [], []
    for i in range(0, len(paths), 16):
        batch = np.stack([preprocess(p) for p in paths[i : i + 16]])
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": batch})))
        logits.append(out["logits"])
        features.append(out["features"].reshape(len(batch), -1))
    return np.concatenate(logits), np.concatenate(features)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def mapped(logits, reduce):
    p = softmax(logits)
    return np.stack([reduce(p[:, MAPPING[c]], axis=1) for c in CLASSES], 1).argmax(1)


def train_head(x, y, epochs=300, lr=0.5, weight_decay=1e-4):
    """Full-batch softmax regression (the same model as the trained head, without the framework)."""
    w = np.zeros((x.shape[1], len(CLASSES)))
    b = np.zeros(len(CLASSES))
    for _ in range(epochs):
        p = softmax(x @ w + b)
        p[np.arange(len(y)), y] -= 1
        w -= lr * (x.T @ p / len(y) + weight_decay * w)
        b -= lr * p.mean(0)
    return w, b


def folder(root, labels):
    paths, ys = [], []
    for name, label in labels:
        for f in sorted(os.listdir(f"{root}/{name}")):
            paths.append(f"{root}/{name}/{f}")
            ys.append(CLASSES.index(label))
    return paths, np.array(ys)


def main():
    session = ort.InferenceSession(MODEL)
    paths, y = folder(f"{SHARED}/data/animals10/images", [(c, c) for c in CLASSES])
    logits, x = run(session, paths)
    cd_paths, cd_y = folder(
        f"{SHARED}/data/cats_and_dogs_filtered/validation", [("cats", "cat"), ("dogs", "dog")]
    )
    cd_logits, cd_x = run(session, cd_paths)

    rows = []
    for name, reduce in (("mapping (sum)", np.sum), ("mapping (max)", np.max)):
        rows.append((name, np.mean(mapped(logits, reduce) == y), np.mean(mapped(cd_logits, reduce) == cd_y)))
    order = np.random.default_rng(0).permutation(len(y))
    correct = 0
    for fold in np.array_split(order, 5):
        train = np.setdiff1d(order, fold)
        w, b = train_head(x[train], y[train])
        correct += np.sum((x[fold] @ w + b).argmax(1) == y[fold])
    w, b = train_head(x, y)
    rows.append(("head (5-fold CV)", correct / len(y), np.mean((cd_x @ w + b).argmax(1) == cd_y)))
    print("| candidate | animals10 (240) | cats_and_dogs validation (1,000) |")
    print("| --- | --- | --- |")
    for name, a, c in rows:
        print(f"| {name} | {a:.1%} | {c:.1%} |")


if __name__ == "__main__":
    sys.exit(main())
