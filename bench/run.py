"""bench/run's main program: runs the selected figures (Bestiary and its peer alternately, on the
same inputs, in this one run), prints medians and ratios, and writes results/<date>.json,
results/latest.md and results/latest.png. Quick runs write under work/results-quick/ instead; runs
of some figures only (--only) write results/<date>.md and .png but leave latest.* to whole runs."""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import common, machine, report  # noqa: E402
from harness import fig_accuracy, fig_bulk, fig_conv, fig_engine, fig_peak, fig_server, fig_training, fig_transfer, fig_trust  # noqa: E402
from harness.common import BESTIARY, RESULTS, ROOT, WORK, log  # noqa: E402

FIGURES = {
    "training": fig_training.figure,
    "accuracy": fig_accuracy.figure,
    "transfer": fig_transfer.figure,
    "engine": fig_engine.figure,
    "server": fig_server.figure,
    "bulk": fig_bulk.figure,
    "trust": fig_trust.figure,
    "conv": fig_conv.figure,
}


def parse():
    p = argparse.ArgumentParser(description="Bestiary against PyTorch, onnxruntime and a Python service, side by side.")
    p.add_argument("--quick", action="store_true", help="tiny inputs, one round: checks every figure runs (a few minutes)")
    p.add_argument("--only", default=",".join(FIGURES),
                   help=f"comma-separated figures: {', '.join(FIGURES)} (the matmul peak, figure 7, always runs)")
    p.add_argument("--rounds", type=int, help="alternating rounds per pair (default 3; quick 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads each side may use (default: every core)")
    p.add_argument("--cifar-train-per-class", type=int, default=2000, help="figure 2: training photos per class")
    p.add_argument("--cifar-epochs", type=int, default=10, help="figure 2: epochs of the schedule")
    p.add_argument("--cifar-target", type=float, default=0.7, help="figure 2: validation accuracy to reach")
    p.add_argument("--cifar-validation-per-class", type=int, default=200,
                   help="figure 2: held-out validation photos per class")
    p.add_argument("--cifar-arch", default="seed-cnn", help="figure 2: network (seed-cnn, resnet18)")
    p.add_argument("--cifar-rounds", type=int,
                   help="figure 2: rounds of its four contenders, each run minutes long (default: --rounds)")
    p.add_argument("--cifar-timeout", type=float, default=3600, help="figure 2: seconds one run may take")
    p.add_argument("--bulk-photos", type=int, default=5000, help="figure 6: photos under the prefix")
    p.add_argument("--omp-wait-policy", choices=["auto", "default", "passive"], default="auto",
                   help="OpenMP waiting of the PyTorch peers: passive when the machine is busy at start (auto)")
    p.add_argument("--no-build", action="store_true", help="do not build target/release/bestiary when it is missing")
    cfg = p.parse_args()
    cfg.rounds = cfg.rounds or (1 if cfg.quick else 3)
    cfg.cifar_rounds = cfg.cifar_rounds or cfg.rounds
    cfg.only = [f.strip() for f in cfg.only.split(",") if f.strip()]
    unknown = [f for f in cfg.only if f not in FIGURES and f != "peak"]
    if unknown:
        p.error(f"unknown figures {unknown}; choose from {', '.join(FIGURES)}")
    cfg.python = sys.executable
    # PyTorch's OpenMP threads spin while they wait; on a machine that other work keeps busy
    # that makes it tens of times slower (measured here: 0.6 against 27 img/s), which would
    # be the machine's fault, not PyTorch's. "auto": passive waiting when the machine is busy.
    busy = os.getloadavg()[0] >= 1.0
    if cfg.omp_wait_policy == "auto":
        cfg.omp_wait_policy = "passive" if busy else "default"
    if cfg.omp_wait_policy == "passive":
        common.PEER_ENV["OMP_WAIT_POLICY"] = "PASSIVE"
    # Bestiary's own thread pools (rayon for burn; engines take --threads).
    cfg.bestiary_env = {"RAYON_NUM_THREADS": str(cfg.threads)}
    return cfg


def ensure_binary(cfg):
    if os.path.exists(BESTIARY):
        return
    if cfg.no_build:
        sys.exit(f"{BESTIARY} is missing: cargo build --release -p bestiary")
    log("building target/release/bestiary (cargo build --release -p bestiary)")
    subprocess.run(["cargo", "build", "--release", "-p", "bestiary"], cwd=ROOT, check=True)


def main():
    cfg = parse()
    ensure_binary(cfg)
    os.makedirs(WORK, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    desc = machine.describe()
    log(f"machine: {machine.one_line(desc)}")
    ctx = {"versions": desc["versions"], "flops": fig_peak.Flops(), "notes": []}
    results = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "quick": cfg.quick, "rounds": cfg.rounds,
               "threads": cfg.threads, "figures": cfg.only, "machine": desc, "rows": [], "errors": {}, "notes": ctx["notes"],
               "options": {k: v for k, v in vars(cfg).items() if k not in ("bestiary_env",)}}
    try:
        log("figure 7: fp32 matmul peak")
        results["peak"] = fig_peak.measure(cfg)
        ctx["peak"] = results["peak"]
    except Exception as error:  # noqa: BLE001
        results["errors"]["peak"] = str(error)
    folder = os.path.join(WORK, "results-quick") if cfg.quick else RESULTS
    partial = bool(set(FIGURES) - set(cfg.only))
    os.makedirs(folder, exist_ok=True)
    stamp = started.strftime("%Y-%m-%d-%H%M%S")
    results["json_path"] = os.path.join(folder, f"{stamp}.json")
    # Only a run of every figure becomes latest.*, so the README's table is never half replaced.
    report_name = f"{stamp}-partial" if partial else "latest"

    def save():
        """Written after every figure, so an interrupted run keeps what it measured."""
        results["seconds"] = time.monotonic() - t0
        results["flops"] = {f"{a}@{s}": v for (a, s), v in ctx["flops"].cache.items()}
        desc["load_average_at_end"] = os.getloadavg()
        with open(results["json_path"], "w") as f:
            json.dump(results, f, indent=2, default=str)
        with open(os.path.join(folder, f"{report_name}.md"), "w") as f:
            f.write(report.markdown(results))

    for name in cfg.only:
        if name == "peak":
            continue
        log(f"figure {name}")
        try:
            results["rows"] += FIGURES[name](cfg, ctx)
        except Exception as error:  # noqa: BLE001 - one broken figure must not lose the others
            traceback.print_exc()
            results["errors"][name] = f"{type(error).__name__}: {error}"
        save()
    save()
    if partial:
        report.chart(results, os.path.join(folder, f"{report_name}.png"))
    elif report.chart(results, os.path.join(folder, "latest.png")):
        shutil.copy(os.path.join(folder, "latest.png"), os.path.join(folder, f"{stamp}.png"))
    print(report.console(results))
    failed = dict(results["errors"])
    for r in results["rows"]:
        if r.get("kind") == "measurement":
            if r["error"]:
                failed[f"{r['figure']} / {r['workload']} / {r['metric']}"] = r["error"]
            continue
        for s in ("bestiary", "peer"):
            if r[s].get("error"):
                failed[f"{r['figure']} / {r['workload']} / {r[s]['name']}"] = r[s]["error"]
    for name, error in failed.items():
        print(f"FAILED {name}: {error[:300]}")
    print(f"results: {results['json_path']}, {os.path.join(folder, report_name + '.md')} ({results['seconds'] / 60:.1f} min)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
