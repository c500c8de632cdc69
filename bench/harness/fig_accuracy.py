"""Figure 2: time to accuracy on CIFAR-10 (32 px): the same recipe (seed CNN, AdamW, cosine
schedule over a fixed number of epochs, augmentation, batch 32) in `bestiary train` and in the
PyTorch script, wall time from launching the process to the first epoch whose validation
accuracy reaches the target. The process is stopped there."""

import json
import os
import shutil

from . import data
from .common import BESTIARY, WORK, Contender, alternate, peer, row, run, side


def time_to_target(target):
    def watch(result):
        if not result.ok:
            raise RuntimeError(result.fail_reason())
        best = 0.0
        for t, line in result.lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            accuracy = record.get("validation_accuracy") if isinstance(record, dict) else None
            if accuracy is None or "epoch" not in record:
                continue
            best = max(best, accuracy)
            if accuracy >= target:
                return {"seconds": t, "epochs": record["epoch"] + 1, "accuracy": accuracy}
        raise RuntimeError(f"target {target:.0%} not reached (best {best:.1%})")

    return watch


def stop_at(target):
    def on_line(line):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return False
        return isinstance(record, dict) and (record.get("validation_accuracy") or 0) >= target

    return on_line


def figure(cfg, ctx):
    if cfg.quick:
        train_per_class, validation_per_class, epochs, target = 50, 20, 2, 0.15
    else:
        train_per_class, validation_per_class = cfg.cifar_train_per_class, 200
        epochs, target = cfg.cifar_epochs, cfg.cifar_target
    root = data.cifar(train_per_class, validation_per_class)
    size, batch, arch = 32, 32, "seed-cnn"
    out = os.path.join(WORK, "accuracy-out")
    cache = os.path.join(WORK, "cache", "cifar")
    measure = time_to_target(target)
    timeout = cfg.cifar_timeout

    def bestiary(_round):
        shutil.rmtree(out, ignore_errors=True)
        return measure(run([BESTIARY, "train", "--data", root, "--out", out, "--name", "cifar", "--arch", arch,
                            "--epochs", epochs, "--batch-size", batch, "--image-size", size,
                            "--cache-dir", cache, "--json", "--quiet"],
                           env=cfg.bestiary_env, on_line=stop_at(target), timeout=timeout))

    def pytorch(_round):
        return measure(peer("torch_train.py", "--train", os.path.join(root, "train"),
                            "--validation", os.path.join(root, "validation"), "--arch", arch,
                            "--epochs", epochs, "--batch-size", batch, "--image-size", size,
                            "--threads", cfg.threads, "--workers", cfg.threads,
                            on_line=stop_at(target), timeout=timeout))

    a = Contender("bestiary train", "bestiary", bestiary)
    b = Contender(f"PyTorch {ctx['versions']['torch']}", "peer", pytorch)
    alternate([a, b], cfg.rounds, "time to accuracy")
    settings = {"model": arch, "batch_size": batch, "image_size": size, "threads": cfg.threads,
                "data": f"CIFAR-10, {train_per_class * 10} train / {validation_per_class * 10} validation photos",
                "recipe": f"AdamW lr 2e-3, cosine over {epochs} epochs, augmentation on",
                "target": f"{target:.0%} validation accuracy"}
    flops = ctx["flops"](arch, size)
    return [row("2 time to accuracy", f"{arch} to {target:.0%} on CIFAR-10", settings, "wall time to target", "s",
                side(a, "seconds"), side(b, "seconds"), higher_is_better=False,
                epochs_needed={"bestiary": [s["epochs"] for s in a.samples], "peer": [s["epochs"] for s in b.samples]},
                images_per_epoch=train_per_class * 10, gflop_per_image=flops["train_step_gflop"])]
