"""CIFAR-10 accuracy reached within wall-time budgets (by default 15 and 60 minutes): `bestiary
train` with its default (standard) recipe on a held-out split, one run per network, the schedule
stretched over `--epochs` that fit the longest budget. Each run's validation accuracy per epoch
is read with the wall time since launch; a budget's figure is the best accuracy of the epochs
finished within it (the run is stopped at the longest budget).

    bench/.venv/bin/python bench/time_budget.py --arch seed-cnn:24 --arch resnet18:10
    bench/.venv/bin/python bench/time_budget.py --arch seed-cnn:24 --arch resnet18:10 --pin

`--pin` runs the networks at once, each on its own core (taskset), so two 60-minute runs take
one hour of a 2-vCPU machine instead of two; without it they run one after the other on every
core. Results: bench/results/<date>-budget.json and .md."""

import argparse
import json
import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import data  # noqa: E402
from harness.common import BESTIARY, RESULTS, WORK, epoch_records, log, run  # noqa: E402
from harness.machine import describe, one_line  # noqa: E402


def epochs_of(result):
    """(seconds since launch, epoch, validation accuracy, images/s) for every epoch line."""
    epochs = []
    for seconds, record in epoch_records(result):
        if record.get("validation_accuracy") is not None:
            epochs.append({"seconds": round(seconds, 1), "epoch": record["epoch"] + 1,
                           "validation_accuracy": record["validation_accuracy"],
                           "train_accuracy": record.get("train_accuracy"),
                           "images_per_second": record.get("images_per_second")})
    return epochs


def best_within(epochs, seconds):
    done = [e for e in epochs if e["seconds"] <= seconds]
    if not done:
        return None
    best = max(done, key=lambda e: e["validation_accuracy"])
    return {"validation_accuracy": best["validation_accuracy"], "epoch": best["epoch"],
            "seconds": best["seconds"], "epochs_done": len(done)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", required=True,
                   help="network:epochs of its schedule, e.g. seed-cnn:24 (repeatable)")
    p.add_argument("--minutes", default="15,60", help="budgets in minutes; the run stops at the longest")
    p.add_argument("--train-per-class", type=int, default=4500)
    p.add_argument("--validation-per-class", type=int, default=500)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pin", action="store_true", help="run the networks at once, one core each")
    cfg = p.parse_args()
    budgets = [float(m) for m in cfg.minutes.split(",")]
    root = data.cifar(cfg.train_per_class, cfg.validation_per_class)
    machine = describe()
    started = time.strftime("%Y-%m-%d-%H%M%S", time.gmtime())
    cores = sorted(os.sched_getaffinity(0))
    if cfg.pin and len(cfg.arch) > len(cores):
        sys.exit(f"--pin needs a core per network: {len(cfg.arch)} networks, {len(cores)} cores")

    results = {}

    def train(index, spec):
        arch, epochs = spec.split(":")
        out = os.path.join(WORK, f"budget-out-{arch}")
        cmd = [BESTIARY, "train", "--data", root, "--out", out, "--name", "cifar", "--arch", arch,
               "--epochs", epochs, "--batch-size", cfg.batch_size, "--image-size", cfg.image_size,
               "--cache-dir", os.path.join(WORK, "cache", f"budget-{arch}"), "--json", "--quiet"]
        if cfg.pin:
            cmd = ["taskset", "-c", str(cores[index])] + cmd
        shutil.rmtree(out, ignore_errors=True)
        log(f"  {arch}: {' '.join(map(str, cmd))}")
        result = run(cmd, timeout=max(budgets) * 60)
        epochs_seen = epochs_of(result)
        if not result.ok and not epochs_seen:
            raise RuntimeError(result.fail_reason())
        results[arch] = {
            "command": " ".join(map(str, cmd)),
            "schedule_epochs": int(epochs),
            "stopped_at_budget": result.killed,
            "wall_seconds": round(result.wall, 1),
            "epochs": epochs_seen,
            "budgets": {f"{m:g} min": best_within(epochs_seen, m * 60) for m in budgets},
        }
        log(f"  {arch}: {results[arch]['budgets']}")

    if cfg.pin:
        threads = [threading.Thread(target=train, args=(i, spec)) for i, spec in enumerate(cfg.arch)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i, spec in enumerate(cfg.arch):
            train(i, spec)

    report = {"started": started, "machine": machine, "data": root, "pinned": cfg.pin,
              "train_photos": cfg.train_per_class * 10, "validation_photos": cfg.validation_per_class * 10,
              "image_size": cfg.image_size, "batch_size": cfg.batch_size, "networks": results}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{started}-budget.json"), "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"# CIFAR-10 accuracy within {', '.join(f'{m:g}' for m in budgets)} minutes ({started} UTC)", "",
             f"{one_line(machine)}; {cfg.train_per_class * 10} train / {cfg.validation_per_class * 10} "
             f"held-out photos, {cfg.image_size} px, batch {cfg.batch_size}, standard recipe; "
             + ("networks at once, one core each" if cfg.pin else "one network at a time, every core"), "",
             "| network | schedule | " + " | ".join(f"{m:g} min" for m in budgets) + " |",
             "| --- | --- | " + " | ".join("---" for _ in budgets) + " |"]
    for arch, r in results.items():
        cells = []
        for m in budgets:
            b = r["budgets"][f"{m:g} min"]
            cells.append("–" if b is None else f"{b['validation_accuracy']:.1%} (epoch {b['epoch']}, {b['seconds']:.0f} s)")
        lines.append(f"| {arch} | {r['schedule_epochs']} epochs | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, f"{started}-budget.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
