"""Measures the two candidate built-in animal models on the same photos, so the choice is recorded.

Candidates (both on the ImageNet EfficientNet-Lite0, 224 px, centre crop 0.875):
  mapping  - no training: ImageNet classes mapped a priori to the ten animals by their WordNet
             names (every dog breed -> dog, tabby/tiger/Persian/Siamese/Egyptian cat -> cat, ...);
             the class score is the sum (or the max) of the mapped ImageNet probabilities.
  head     - a linear head on the frozen 1280-d features, what `bestiary train --arch
             efficientnet-lite0` builds;
  head + prior - the head trained on top of the mapping's log-probabilities (logits =
             head(f) + log(mapped probability)), what `--imagenet-prior` builds;
  (and each with horizontal-flip copies of the training photos).
Heads are estimated honestly: stratified 5-fold cross-validation, repeated with 4 seeds (mean
and spread); the cats_and_dogs column is the head trained on all 240 photos.
Photos: ../shared/data/animals10 (240) and, as photos from another source, the 1,000
validation photos of ../shared/data/cats_and_dogs_filtered (10-way prediction must say cat/dog).

Usage: python bench/default-model/compare.py   (needs: pip install onnxruntime==1.32.0 pillow numpy)
`measure()` returns the same figures as numbers (fewer seeds, folds or photos if asked); the
benchmark's trust figure (bench/harness/fig_trust.py) calls it.
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

SHARED = os.environ.get("BESTIARY_SHARED", os.path.join(os.path.dirname(__file__), "../../../shared"))
MODEL = f"{SHARED}/models/efficientnet_lite0/efficientnet_lite0.onnx"
# Which ImageNet-1k classes make up each animal: the file `scripts/build-default-model` gives
# `bestiary train --imagenet-prior`.
with open(os.path.join(os.path.dirname(__file__), "../../scripts/animals10-imagenet-prior.json")) as f:
    MAPPING = json.load(f)
CLASSES = sorted(MAPPING)


def preprocess(path, flip=False):
    image = Image.open(path).convert("RGB")
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    return ((pixels - 127.0) / 128.0).transpose(2, 0, 1)


def run(session, paths, flip=False):
    logits, features = [], []
    for i in range(0, len(paths), 16):
        batch = np.stack([preprocess(p, flip) for p in paths[i : i + 16]])
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


def train_head(x, y, epochs=300, lr=0.5, weight_decay=1e-4, prior=None):
    """Full-batch softmax regression (the same model as the trained head, without the framework);
    `prior` (photos x classes) is added to the logits, as the ImageNet prior is."""
    w = np.zeros((x.shape[1], len(CLASSES)))
    b = np.zeros(len(CLASSES))
    for _ in range(epochs):
        z = x @ w + b
        if prior is not None:
            z = z + prior
        p = softmax(z)
        p[np.arange(len(y)), y] -= 1
        w -= lr * (x.T @ p / len(y) + weight_decay * w)
        b -= lr * p.mean(0)
    return w, b


def log_mapped(logits):
    p = softmax(logits)
    return np.log(np.stack([p[:, MAPPING[c]].sum(1) for c in CLASSES], 1) + 1e-6)


def stratified_folds(y, seed, k=5):
    rng = np.random.default_rng(seed)
    folds = [[] for _ in range(k)]
    for c in range(len(CLASSES)):
        for i, j in enumerate(rng.permutation(np.where(y == c)[0])):
            folds[i % k].append(j)
    return [np.array(f) for f in folds]


def cross_validate(y, fit_predict, seeds=4, k=5):
    """Mean and standard deviation over seeds of the k-fold out-of-fold accuracy."""
    accuracies = []
    for seed in range(seeds):
        right = 0
        for fold in stratified_folds(y, seed, k):
            train = np.setdiff1d(np.arange(len(y)), fold)
            right += np.sum(fit_predict(train, fold).argmax(1) == y[fold])
        accuracies.append(right / len(y))
    return np.mean(accuracies), np.std(accuracies)


def folder(root, labels, per_class=None):
    """The photos of `root/<name>` for each (name, label), the first `per_class` of each if given."""
    paths, ys = [], []
    for name, label in labels:
        for f in sorted(os.listdir(f"{root}/{name}"))[:per_class]:
            paths.append(f"{root}/{name}/{f}")
            ys.append(CLASSES.index(label))
    return paths, np.array(ys)


CANDIDATES = (  # (ImageNet prior, flipped copies, weight decay) of each head
    (False, False, 1e-4), (False, True, 1e-4), (True, False, 1e-4), (True, False, 1e-2), (True, True, 1e-2)
)


def measure(animals=f"{SHARED}/data/animals10/images", cats_and_dogs=f"{SHARED}/data/cats_and_dogs_filtered/validation",
            seeds=4, folds=5, per_class=None):
    """Every candidate's figures: dicts with `candidate`, `accuracy` on the animals10 photos (the
    mapping's on all of them; a head's the mean over `seeds` of its `folds`-fold out-of-fold
    accuracy, with `spread`, their standard deviation), and `cats_and_dogs`, the accuracy on that
    folder's photos (heads trained on every animals10 photo); None where `cats_and_dogs` is None.
    `per_class` keeps only the first photos of each animals10 class."""
    session = ort.InferenceSession(MODEL)
    paths, y = folder(animals, [(c, c) for c in CLASSES], per_class)
    logits, x = run(session, paths)
    flipped_logits, flipped_x = run(session, paths, flip=True)
    if cats_and_dogs:
        cd_paths, cd_y = folder(cats_and_dogs, [("cats", "cat"), ("dogs", "dog")])
        cd_logits, cd_x = run(session, cd_paths)
        cd_prior = log_mapped(cd_logits)
    prior, flipped_prior = (log_mapped(l) for l in (logits, flipped_logits))

    rows = []
    for name, reduce in (("mapping (sum)", np.sum), ("mapping (max)", np.max)):
        rows.append({"candidate": name, "accuracy": np.mean(mapped(logits, reduce) == y), "spread": None,
                     "cats_and_dogs": np.mean(mapped(cd_logits, reduce) == cd_y) if cats_and_dogs else None})

    def candidate(with_prior, flips, weight_decay):
        def inputs(rows):
            xs, ys, ps = [x[rows]], [y[rows]], [prior[rows]]
            if flips:
                xs, ys, ps = xs + [flipped_x[rows]], ys + [y[rows]], ps + [flipped_prior[rows]]
            return np.concatenate(xs), np.concatenate(ys), np.concatenate(ps)

        def fit(rows):
            xs, ys, ps = inputs(rows)
            return train_head(xs, ys, weight_decay=weight_decay, prior=ps if with_prior else None)

        def fit_predict(train, test):
            w, b = fit(train)
            return x[test] @ w + b + (prior[test] if with_prior else 0)

        mean, spread = cross_validate(y, fit_predict, seeds, folds)
        cd = None
        if cats_and_dogs:
            w, b = fit(np.arange(len(y)))
            cd = np.mean((cd_x @ w + b + (cd_prior if with_prior else 0)).argmax(1) == cd_y)
        return mean, spread, cd

    for with_prior, flips, weight_decay in CANDIDATES:
        name = ("head + prior" if with_prior else "head") + (" + flips" if flips else "") + f", weight decay {weight_decay:g}"
        mean, spread, cd = candidate(with_prior, flips, weight_decay)
        rows.append({"candidate": name, "accuracy": mean, "spread": spread, "cats_and_dogs": cd})
    return rows


def main():
    print("| candidate | animals10 (240; heads: 5-fold CV) | cats_and_dogs validation (1,000) |")
    print("| --- | --- | --- |")
    for r in measure():
        a = f"{r['accuracy']:.1%}" + (f" ± {r['spread']:.1%}" if r["spread"] is not None else "")
        print(f"| {r['candidate']} | {a} | {r['cats_and_dogs']:.1%} |")


if __name__ == "__main__":
    sys.exit(main())
