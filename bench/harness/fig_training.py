"""Figure 1: from-scratch training throughput, `bestiary train` against a PyTorch script with the
same network, optimiser, schedule, augmentation and data (animals10 photos from disk), in
images per second of the training part of each epoch, the first epoch left out (it includes the
cold photo cache and warm-up). A third contender, the same `bestiary train` with
`BESTIARY_CONV=burn` (burn-flex's convolution and burn's generic backward and batch norm), is
the "before" of Bestiary's own kernels, in the same run."""

import os
import shutil

from . import data
from .common import BESTIARY, WORK, Contender, alternate, epoch_records, median, peer, row, run, side


def epoch_rates(result):
    rates = [record["images_per_second"] for _, record in epoch_records(result) if "images_per_second" in record]
    if not rates:
        raise RuntimeError(f"no epoch lines: {result.fail_reason()}")
    return rates


def steady_rate(result):
    if not result.ok:
        raise RuntimeError(result.fail_reason())
    rates = epoch_rates(result)
    return median(rates[1:] if len(rates) > 1 else rates)


def figure(cfg, ctx):
    root = data.animals(cfg.quick)
    size = 64 if cfg.quick else 128
    epochs = 2 if cfg.quick else 3
    batch = 32
    rows = []
    for arch in ("seed-cnn", "resnet18"):
        out = os.path.join(WORK, "train-out")
        cache = os.path.join(WORK, "cache", f"train-{size}")

        def bestiary(_round, arch=arch, env=None):
            shutil.rmtree(out, ignore_errors=True)
            result = run([BESTIARY, "train", "--data", root, "--out", out, "--name", arch, "--arch", arch,
                          "--epochs", epochs, "--batch-size", batch, "--image-size", size,
                          "--cache-dir", cache, "--json", "--quiet"], env={**cfg.bestiary_env, **(env or {})})
            return steady_rate(result)

        def burn_route(_round, arch=arch):
            return bestiary(_round, arch, {"BESTIARY_CONV": "burn"})

        def pytorch(_round, arch=arch):
            result = peer("torch_train.py", "--train", os.path.join(root, "train"),
                          "--validation", os.path.join(root, "validation"), "--arch", arch,
                          "--epochs", epochs, "--batch-size", batch, "--image-size", size,
                          "--threads", cfg.threads, "--workers", cfg.threads)
            return steady_rate(result)

        a = Contender("bestiary train", "bestiary", bestiary)
        before = Contender("bestiary train, burn-flex convolution (BESTIARY_CONV=burn)", "bestiary", burn_route)
        b = Contender(f"PyTorch {ctx['versions']['torch']}", "peer", pytorch)
        alternate([a, before, b], cfg.rounds, f"training {arch}")
        flops = ctx["flops"](arch, size)
        settings = {"model": arch, "batch_size": batch, "image_size": size, "threads": cfg.threads,
                    "data": f"animals10 ({data.count_images(root, 'train')} train photos, augmentation on)",
                    "epochs": epochs, "optimizer": "AdamW lr 2e-3 wd 1e-4, cosine, label smoothing 0.1"}
        rows.append(row("1 training", f"{arch} from scratch", settings, "training throughput", "img/s",
                        side(a), side(b), gflop_per_image=flops["train_step_gflop"]))
        rows.append(row("1 training", f"{arch} from scratch, before: burn's convolution", settings,
                        "training throughput", "img/s", side(before), side(b),
                        gflop_per_image=flops["train_step_gflop"]))
    return rows
