"""Writes one run's results: the full JSON (every sample), a Markdown report (machine, settings per
figure, medians, ratios, GFLOP/s as a share of the measured matmul peak) and a PNG chart of the
ratios; and prints the table."""

import json
import os
import textwrap

from .common import fmt
from .machine import one_line

FIGURE_TITLES = {
    "1 training": "From-scratch training throughput",
    "2 time to accuracy": "Time to accuracy on CIFAR-10",
    "3 transfer": "Transfer learning on animals10",
    "4 engine": "Inference engines",
    "5 server": "HTTP serving, JPEG in, JSON out",
    "6 bulk": "Bulk classification of an S3 prefix",
    "8 trust": "Accuracy, calibration and \"none of my classes\" of the built-in model",
}


def cell(s, unit):
    if s.get("median") is None:
        return f"not run: {(s.get('error') or 'no sample')[:160]}".replace("|", "/").replace("\n", " ")
    samples = [x for x in s.get("samples", []) if x is not None]
    spread = f" ({fmt(min(samples))}–{fmt(max(samples))}, n={len(samples)})" if len(samples) > 1 else ""
    return f"{fmt(s['median'])} {unit}{spread}"


def gflops(r, which, peak):
    g = r.get("gflop_per_image")
    m = r[which].get("median")
    if not g or m is None or r["unit"] not in ("img/s", "req/s"):
        return None
    value = g * m
    return f"{value:.1f} ({value / peak:.0%})" if peak else f"{value:.1f}"


def ratio_text(r):
    return "–" if r["ratio"] is None else f"**{r['ratio']:.2f}×**"


def value_text(r):
    """The value of a measurement row (common.measurement), or why it is missing."""
    if r["value"] is None:
        return f"not run: {(r.get('error') or 'no value')[:160]}".replace("|", "/").replace("\n", " ")
    return f"{fmt(r['value'])}{'' if r['unit'] in ('', '%') else ' '}{r['unit']}"


def markdown(results):
    m = results["machine"]
    v = m["versions"]
    peak = (results.get("peak") or {}).get("peak_gflops")
    out = [f"# Bestiary benchmarks{' (quick mode: tiny inputs, not for quoting)' if results['quick'] else ''}", ""]
    out += [f"Run {results['started']} ({results['seconds'] / 60:.0f} min), {results['rounds']} alternating rounds (A B A B …) per pair, "
            f"medians shown with (min–max, n). **Ratio** is Bestiary's advantage: its speed over the peer's, "
            f"or the peer's time / latency / memory over Bestiary's — above 1 Bestiary is better.", ""]
    loads = f"load average (1/5/15 min) at start {', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}"
    if m.get("load_average_at_end"):
        loads += f", at end {', '.join(f'{x:.1f}' for x in m['load_average_at_end'])}"
    omp = results["options"].get("omp_wait_policy")
    out += [f"- Machine: {one_line(m)}; {loads}; PyTorch peers' OpenMP waiting: {omp}",
            f"- Bestiary: {v['bestiary']} (commit {v['bestiary_commit']}{', uncommitted changes' if v['bestiary_worktree_dirty'] else ''}), {v['rustc']}",
            f"- Peers: Python {v['python']}, PyTorch {v['torch']} (CPU), torchvision {v['torchvision']}, onnxruntime {v['onnxruntime']}, "
            f"numpy {v['numpy']}, Pillow {v['pillow']}, FastAPI {v['fastapi']}, uvicorn {v['uvicorn']}, boto3 {v['boto3']}, {v['oha'] or 'oha missing'}"]
    if peak:
        p = results["peak"]
        out.append(f"- Figure 7, fp32 matmul peak: **{peak:.1f} GFLOP/s** at {p['threads']} threads ({p['size']}², best of numpy/OpenBLAS "
                   f"{p['numpy_gflops']:.1f} [{', '.join(p['numpy_blas'])}] and PyTorch {p['torch_gflops']:.1f}); "
                   f"GFLOP/s columns count the model's convolution and matrix FLOPs per image (PyTorch FlopCounterMode; a training step is forward + backward) "
                   f"times images per second, with the share of that peak. The peak is the best sgemm timing of this run and moves with the machine's load; "
                   f"a share near or above 100% means that engine's convolution kernels ran as fast as that measurement.")
    out.append("")
    figures = []
    for r in results["rows"]:
        if r["figure"] not in figures:
            figures.append(r["figure"])
    for figure in figures:
        rows = [r for r in results["rows"] if r["figure"] == figure]
        out += [f"## {figure}. {FIGURE_TITLES.get(figure, figure)}", ""]
        seen = []
        for r in rows:
            key = json.dumps(r["settings"], sort_keys=True)
            if key not in seen:
                seen.append(key)
                out.append("- " + f"**{r['workload']}**: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["settings"].items()))
        if all(r.get("kind") == "measurement" for r in rows):  # figures without peers: one value a row
            out += ["", "| workload | metric | value | detail |", "| --- | --- | --- | --- |"]
            for i, r in enumerate(rows):
                workload = "" if i and rows[i - 1]["workload"] == r["workload"] else r["workload"]
                out.append(f"| {workload} | {r['metric']} | {value_text(r)} | {r.get('detail') or '–'} |")
            out.append("")
            continue
        out += ["", "| workload | metric | Bestiary side | peer side | Bestiary median | peer median | ratio | GFLOP/s (% of peak) Bestiary / peer |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            g = [gflops(r, "bestiary", peak), gflops(r, "peer", peak)]
            out.append(f"| {r['workload']} | {r['metric']} | {r['bestiary']['name']} | {r['peer']['name']} | "
                       f"{cell(r['bestiary'], r['unit'])} | {cell(r['peer'], r['unit'])} | {ratio_text(r)} | "
                       f"{' / '.join(x or '–' for x in g) if any(g) else '–'} |")
            if r.get("epochs_needed"):
                out.append(f"| | epochs to reach it | | | {r['epochs_needed']['bestiary']} | {r['epochs_needed']['peer']} | | |")
        out.append("")
    if results["errors"]:
        out += ["## Figures that did not run", ""]
        out += [f"- {name}: {error[:400]}" for name, error in results["errors"].items()]
        out.append("")
    if results["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    out.append(f"Full samples: `{os.path.basename(results['json_path'])}`. Reproduce: `bench/run` (see bench/README.md).")
    return "\n".join(out) + "\n"


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["ratio"] is not None]
    if not rows:
        return False
    labels = [textwrap.shorten(f"{r['figure'].split()[0]}. {r['workload']} · {r['metric']}", 70) + "\n"
              + textwrap.shorten(f"{r['bestiary']['name']} vs {r['peer']['name']}", 70) for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(13, 0.55 * len(rows) + 1.8))
    colours = ["#2a9d8f" if x >= 1 else "#e76f51" for x in ratios]
    ax.barh(range(len(rows)), ratios, color=colours)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    for i, x in enumerate(ratios):
        ax.text(x, i, f" {x:.2f}×", va="center", fontsize=7)
    ax.set_xlabel("Bestiary's advantage over the peer (×, log scale; >1 = Bestiary better)")
    ax.set_title(f"Bestiary vs peers{' (QUICK MODE)' if results['quick'] else ''}\n{one_line(results['machine'])}\n"
                 f"{results['started']}, medians of {results['rounds']} alternating rounds", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def console(results):
    lines = []
    for r in results["rows"]:
        if r.get("kind") == "measurement":
            lines.append(f"{r['figure']:<20} {r['workload'][:44]:<44} {r['metric'][:48]:<48} {value_text(r)}"
                         + (f" ({r['detail']})" if r.get("detail") else ""))
            continue
        b, p = r["bestiary"], r["peer"]
        lines.append(f"{r['figure']:<20} {r['workload'][:52]:<52} {r['metric'][:26]:<26} "
                     f"{b['name'][:22]:>22} {fmt(b['median']):>8} | {p['name'][:34]:<34} {fmt(p['median']):>8} {r['unit']:<5} "
                     f"ratio {('%.2f' % r['ratio']) if r['ratio'] else '–'}")
    return "\n".join(lines)
