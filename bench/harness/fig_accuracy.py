"""Figure 2: time to accuracy on CIFAR-10 (32 px, held-out validation photos): `bestiary train
--recipe fast` against the PyTorch script with the same recipe and with the standard one (AdamW,
cosine, resized crops and colour jitter, what the script and Bestiary use by default), and the
standard recipe on both sides; wall time from launching the process to the first epoch whose
validation accuracy reaches the target, where the process is stopped. Every contender runs the
same network, batch and schedule length, in turn, round after round."""

import json
import os
import shutil

from . import data
from .common import BESTIARY, WORK, Contender, alternate, epoch_records, peer, row, run, side


def time_to_target(target):
    def watch(result):
        if not result.ok:
            raise RuntimeError(result.fail_reason())
        best = 0.0
        for t, record in epoch_records(result):
            accuracy = record.get("validation_accuracy")
            if accuracy is None:
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


RECIPES = {
    "standard": "AdamW lr 2e-3, cosine, label smoothing 0.1, resized crops + flips + colour jitter",
    "fast": "SGD Nesterov lr 0.05, weight decay 5e-4, triangular, label smoothing 0.2, flips + shifts",
}


def figure(cfg, ctx):
    if cfg.quick:
        train_per_class, validation_per_class, epochs, target = 50, 20, 2, 0.15
    else:
        train_per_class, validation_per_class = cfg.cifar_train_per_class, cfg.cifar_validation_per_class
        epochs, target = cfg.cifar_epochs, cfg.cifar_target
    root = data.cifar(train_per_class, validation_per_class)
    size, batch, arch = 32, 32, cfg.cifar_arch
    out = os.path.join(WORK, "accuracy-out")
    cache = os.path.join(WORK, "cache", "cifar")
    measure = time_to_target(target)
    timeout = cfg.cifar_timeout

    def bestiary(recipe):
        def go(_round):
            shutil.rmtree(out, ignore_errors=True)
            return measure(run([BESTIARY, "train", "--data", root, "--out", out, "--name", "cifar", "--arch", arch,
                                "--recipe", recipe, "--epochs", epochs, "--batch-size", batch,
                                "--image-size", size, "--cache-dir", cache, "--json", "--quiet"],
                               env=cfg.bestiary_env, on_line=stop_at(target), timeout=timeout))
        return go

    def pytorch(recipe):
        def go(_round):
            return measure(peer("torch_train.py", "--train", os.path.join(root, "train"),
                                "--validation", os.path.join(root, "validation"), "--arch", arch,
                                "--recipe", recipe, "--epochs", epochs, "--batch-size", batch,
                                "--image-size", size, "--threads", cfg.threads, "--workers", cfg.threads,
                                on_line=stop_at(target), timeout=timeout))
        return go

    # One epoch first fills Bestiary's decoded-photo cache, which every measured run then finds
    # warm; without it the first contender alone pays for decoding the 20,000 JPEGs (~30 s).
    shutil.rmtree(out, ignore_errors=True)
    warm = run([BESTIARY, "train", "--data", root, "--out", out, "--name", "warm-up", "--arch", arch,
                "--epochs", 1, "--batch-size", batch, "--image-size", size, "--cache-dir", cache, "--quiet"],
               env=cfg.bestiary_env, timeout=timeout)
    if not warm.ok:
        raise RuntimeError(f"warm-up run failed: {warm.fail_reason()}")

    torch = f"PyTorch {ctx['versions']['torch']}"
    fast = Contender("bestiary train --recipe fast", "bestiary", bestiary("fast"))
    peer_fast = Contender(f"{torch}, same fast recipe", "peer", pytorch("fast"))
    peer_standard = Contender(f"{torch}, standard recipe", "peer", pytorch("standard"))
    standard = Contender("bestiary train (standard recipe)", "bestiary", bestiary("standard"))
    alternate([fast, peer_fast, peer_standard, standard], cfg.cifar_rounds, "time to accuracy")
    flops = ctx["flops"](arch, size)
    data_text = f"CIFAR-10, {train_per_class * 10} train / {validation_per_class * 10} held-out validation photos"

    def compare(workload, a, b, recipe_text):
        settings = {"model": arch, "batch_size": batch, "image_size": size, "threads": cfg.threads,
                    "data": data_text, "recipe": f"{recipe_text}; schedule over {epochs} epochs",
                    "target": f"{target:.0%} validation accuracy", "rounds": cfg.cifar_rounds}
        return row("2 time to accuracy", workload, settings, "wall time to target", "s",
                   side(a, "seconds"), side(b, "seconds"), higher_is_better=False,
                   epochs_needed={"bestiary": [s["epochs"] for s in a.samples],
                                  "peer": [s["epochs"] for s in b.samples]},
                   images_per_epoch=train_per_class * 10, gflop_per_image=flops["train_step_gflop"])

    goal = f"{arch} to {target:.0%} on CIFAR-10"
    return [
        compare(f"{goal}, both fast recipe", fast, peer_fast, f"both: {RECIPES['fast']}"),
        compare(f"{goal}, fast vs PyTorch's usual", fast, peer_standard,
                f"Bestiary: {RECIPES['fast']}; PyTorch: {RECIPES['standard']}"),
        compare(f"{goal}, both standard recipe", standard, peer_standard, f"both: {RECIPES['standard']}"),
    ]
