"""Measures a model's "none of my classes" detector through `bestiary classify`: in-distribution
photos (a folder per class, default ../shared/data/animals10/images) against generated images
that are no animal (plain colours, gradients, noise, stripes, checkerboards, text, shapes), the
AUROC of the calibrated top score and the acceptance/rejection rates at the model's threshold.

Usage: python bench/default-model/ood.py [--bestiary target/release/bestiary] [--model builtin]
       [--photos DIR] [--generated N]   (needs pillow and numpy)
`measure()` returns the figures as numbers; the benchmark's trust figure
(bench/harness/fig_trust.py) calls it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../..")


def generated(count, seed=0):
    """`count` non-animal images of seven kinds, 320x240, deterministic for `seed`."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        kind = i % 7
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if kind == 0:
            image = Image.new("RGB", (320, 240), color)
        elif kind == 1:
            ramp = np.linspace(0, 1, 320)[None, :, None] * np.ones((240, 1, 1))
            other = rng.integers(0, 256, 3)
            pixels = (1 - ramp) * np.array(color) + ramp * other
            image = Image.fromarray(pixels.astype(np.uint8))
        elif kind == 2:
            image = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
        elif kind == 3:
            width = int(rng.integers(4, 40))
            stripes = ((np.arange(320) // width) % 2).astype(np.uint8)[None, :, None]
            pixels = np.where(stripes, np.array(color), 255 - np.array(color)) * np.ones((240, 1, 1))
            image = Image.fromarray(pixels.astype(np.uint8))
        elif kind == 4:
            cell = int(rng.integers(8, 60))
            yy, xx = np.mgrid[0:240, 0:320]
            board = (((yy // cell) + (xx // cell)) % 2).astype(bool)[:, :, None]
            image = Image.fromarray(np.where(board, 230, 25).astype(np.uint8).repeat(3, 2))
        elif kind == 5:
            image = Image.new("RGB", (320, 240), (250, 250, 245))
            draw = ImageDraw.Draw(image)
            for line in range(8):
                draw.text((10, 10 + 28 * line), f"invoice {i} line {line}: total {rng.integers(1, 999)}.00", fill=(20, 20, 20))
        else:
            image = Image.new("RGB", (320, 240), color)
            draw = ImageDraw.Draw(image)
            for _ in range(6):
                x, y = (int(v) for v in rng.integers(0, 280, 2))
                r = int(rng.integers(10, 60))
                fill = tuple(int(c) for c in rng.integers(0, 256, 3))
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + r, y + r), fill=fill)
        images.append(image)
    return images


def classify(bestiary, model, folder, out, env=None, stdout=None):
    subprocess.run(
        [bestiary, "--quiet", "classify", folder, "--model", model, "--out", out, "--format", "jsonl"],
        check=True, env=env, stdout=stdout,
    )
    records = []
    for directory, _, names in sorted(os.walk(out)):
        for name in sorted(names):
            if name.endswith(".jsonl"):
                with open(os.path.join(directory, name)) as f:
                    records += [json.loads(line) for line in f if line.strip()]
    return records


def auroc(positive, negative):
    """Probability that a random in-distribution photo scores above a random generated one."""
    positive, negative = np.asarray(positive), np.asarray(negative)
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return greater + 0.5 * ties


def measure(bestiary, model, photos, count, env=None, stdout=None):
    """Classifies the photos under `photos` and `count` generated images with `bestiary classify`
    (environment `env`, its summaries to `stdout`); returns the counts, the AUROC of `unknown_score` and how many photos the
    model's threshold accepted and how many generated images it rejected."""
    with tempfile.TemporaryDirectory() as work:
        fake = os.path.join(work, "generated")
        os.makedirs(fake)
        for i, image in enumerate(generated(count)):
            image.save(os.path.join(fake, f"{i:03d}.jpg"), quality=90)
        inside = classify(bestiary, model, photos, os.path.join(work, "in"), env, stdout)
        outside = classify(bestiary, model, fake, os.path.join(work, "out"), env, stdout)
    score = lambda r: r["unknown_score"]
    return {
        "photos": len(inside),
        "generated": len(outside),
        "auroc": auroc([score(r) for r in inside], [score(r) for r in outside]),
        "accepted": sum(not r["unknown"] for r in inside),
        "rejected": sum(r["unknown"] for r in outside),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bestiary", default=os.path.join(ROOT, "target/release/bestiary"))
    p.add_argument("--model", default="builtin")
    p.add_argument("--photos", default=os.path.join(ROOT, "../shared/data/animals10/images"))
    p.add_argument("--generated", type=int, default=70)
    cfg = p.parse_args()
    m = measure(cfg.bestiary, cfg.model, cfg.photos, cfg.generated)
    print(f"in-distribution photos: {m['photos']}, generated non-animals: {m['generated']}")
    print(f"AUROC of the calibrated top score: {m['auroc']:.3f}")
    print(f"at the model's threshold: {m['accepted']}/{m['photos']} photos accepted ({m['accepted'] / m['photos']:.1%}), "
          f"{m['rejected']}/{m['generated']} generated images rejected ({m['rejected'] / m['generated']:.1%})")


if __name__ == "__main__":
    sys.exit(main())
