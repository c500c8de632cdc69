"""The inputs both sides read: train/validation folders made once from ../shared (hard links,
so nothing is duplicated), the same files for Bestiary and its peer."""

import os
import shutil

from .common import SHARED, WORK, log


def _link(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.exists(dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _split(source, name, pick):
    """`pick(class, sorted files)` returns (train files, validation files); the folder is made once."""
    root = os.path.join(WORK, "data", name)
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    shutil.rmtree(root, ignore_errors=True)
    for cls in sorted(os.listdir(source)):
        folder = os.path.join(source, cls)
        if not os.path.isdir(folder):
            continue
        files = sorted(f for f in os.listdir(folder) if not f.startswith("."))
        train, validation = pick(cls, files)
        for split, chosen in (("train", train), ("validation", validation)):
            for f in chosen:
                _link(os.path.join(folder, f), os.path.join(root, split, cls, f))
    open(done, "w").close()
    log(f"  data: made {root}")
    return root


def animals(quick):
    """animals10 with every fifth photo of each class held out (192 train / 48 validation), or
    10 photos a class (8 / 2) in quick mode."""
    source = os.path.join(SHARED, "data", "animals10", "images")

    def pick(_cls, files):
        files = files[:10] if quick else files
        return ([f for i, f in enumerate(files) if i % 5 != 4], [f for i, f in enumerate(files) if i % 5 == 4])

    return _split(source, "animals10-quick" if quick else "animals10", pick)


def cifar(train_per_class, validation_per_class):
    """CIFAR-10 from ../shared/data/cifar10/train: the first `train_per_class` photos of each
    class for training and the next `validation_per_class` as the held-out validation set."""
    source = os.path.join(SHARED, "data", "cifar10", "train")

    def pick(_cls, files):
        return files[:train_per_class], files[train_per_class:train_per_class + validation_per_class]

    return _split(source, f"cifar10-{train_per_class}-{validation_per_class}", pick)


def count_images(root, split):
    return sum(len(files) for _, _, files in os.walk(os.path.join(root, split)))
