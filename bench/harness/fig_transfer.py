"""Figure 3: transfer learning on animals10 from the ImageNet EfficientNet-Lite0 (the same
safetensors weights on both sides): `bestiary train --arch efficientnet-lite0` (frozen backbone,
features computed once and cached, then a linear head) against a typical PyTorch fine-tuning
script (frozen backbone, new linear head, the photos through the backbone every epoch). Wall
time of the whole process from a cold start (fresh output and photo cache) and the validation
accuracy of the model each keeps."""

import json
import os
import shutil

from . import data
from .common import BESTIARY, SHARED, WORK, Contender, alternate, peer, row, run, side

WEIGHTS = os.path.join(SHARED, "models", "efficientnet_lite0", "efficientnet_lite0.safetensors")


def last_json(result, key):
    if not result.ok:
        raise RuntimeError(result.fail_reason())
    for _, line in reversed(result.lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and key in record:
            return record
    raise RuntimeError(f"no {key} in the output: {result.fail_reason()}")


def figure(cfg, ctx):
    root = data.animals(cfg.quick)
    bestiary_epochs, pytorch_epochs = (3, 2) if cfg.quick else (30, 10)
    out = os.path.join(WORK, "transfer-out")
    cache = os.path.join(WORK, "cache", "transfer-cold")

    def bestiary(_round):
        for folder in (out, cache):
            shutil.rmtree(folder, ignore_errors=True)
        result = run([BESTIARY, "train", "--data", root, "--out", out, "--name", "animals",
                      "--arch", "efficientnet-lite0", "--pretrained", WEIGHTS, "--epochs", bestiary_epochs,
                      "--lr", "5e-3", "--cache-dir", cache, "--json", "--quiet"], env=cfg.bestiary_env)
        final = last_json(result, "metrics")  # the version's metrics: its best epoch
        return {"seconds": result.wall, "accuracy": final["metrics"]["validation_accuracy"]}

    def pytorch(_round):
        result = peer("torch_transfer.py", "--train", os.path.join(root, "train"),
                      "--validation", os.path.join(root, "validation"), "--weights", WEIGHTS,
                      "--epochs", pytorch_epochs, "--threads", cfg.threads, "--workers", cfg.threads)
        final = last_json(result, "best_validation_accuracy")
        return {"seconds": result.wall, "accuracy": final["best_validation_accuracy"]}

    a = Contender("bestiary train --arch efficientnet-lite0", "bestiary", bestiary)
    b = Contender(f"PyTorch {ctx['versions']['torch']} fine-tuning", "peer", pytorch)
    alternate([a, b], cfg.rounds, "transfer")
    settings = {"model": "EfficientNet-Lite0 (ImageNet) + linear head", "batch_size": 32, "image_size": 224,
                "threads": cfg.threads,
                "data": f"animals10 ({data.count_images(root, 'train')} train / {data.count_images(root, 'validation')} validation photos)",
                "bestiary": f"{bestiary_epochs} head epochs on cached features, AdamW lr 5e-3",
                "peer": f"{pytorch_epochs} epochs, frozen backbone in every epoch, Adam lr 1e-3, augmentation"}
    return [
        row("3 transfer", "EfficientNet-Lite0 head on animals10", settings, "wall time, cold start to model", "s",
            side(a, "seconds"), side(b, "seconds"), higher_is_better=False),
        row("3 transfer", "EfficientNet-Lite0 head on animals10", settings, "validation accuracy", "%",
            _percent(side(a, "accuracy")), _percent(side(b, "accuracy"))),
    ]


def _percent(s):
    return {**s, "samples": [x * 100 for x in s["samples"]], "median": None if s["median"] is None else s["median"] * 100}
