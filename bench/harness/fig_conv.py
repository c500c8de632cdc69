"""Figure 9: every convolution layer of the seed CNN and ResNet-18 (128 px, batch 32, the shapes
the networks themselves ran), each pass timed on its own: Bestiary's kernels, burn-flex's route
without them (`BESTIARY_CONV=burn` in training; the "before"), and PyTorch (aten's convolution
and convolution_backward). GFLOP/s are the layer's multiply-adds ×2 over the median time; the
share of the machine's matmul peak is against figure 7. Totals weight each layer by how often
the network runs it and leave out the first layer's input gradient, which training never needs."""

import json
import os

from .common import BESTIARY, WORK, Contender, alternate, measurement, median, peer, row, run

PASSES = ("forward", "input-gradient", "weight-gradient")


def totals(layers, route):
    """GFLOP/s of each pass, and of a whole training step's convolutions, over all layers."""
    out, step_flop, step_seconds = {}, 0.0, 0.0
    for name in PASSES:
        flop = seconds = 0.0
        for layer in layers:
            if name == "input-gradient" and layer["first"]:
                continue
            flop += layer["gflop"] * layer["count"]
            seconds += layer[route][name] * layer["count"]
        out[name] = flop / seconds if seconds else None
        step_flop, step_seconds = step_flop + flop, step_seconds + seconds
    out["step"] = step_flop / step_seconds if step_seconds else None
    return out


def per_layer(layers, route):
    return {f"{i}:{name}": layer["gflop"] / layer[route][name] for i, layer in enumerate(layers) for name in PASSES}


def figure(cfg, ctx):
    size, batch, repeats = (64, 8, 2) if cfg.quick else (128, 32, 5)
    rows = []
    peak = (ctx.get("peak") or {}).get("peak_gflops")
    for arch in ("seed-cnn", "resnet18"):
        layers_file = os.path.join(WORK, f"conv-{arch}.json")
        shapes = {}

        def bestiary(_round, arch=arch):
            result = run([BESTIARY, "bench", "conv", "--arch", arch, "--image-size", size, "--batch", batch,
                          "--repeats", repeats, "--json"], env=cfg.bestiary_env)
            if not result.ok:
                raise RuntimeError(result.fail_reason())
            report = json.loads("\n".join(line for _, line in result.lines))
            with open(layers_file, "w") as f:
                json.dump(report, f)
            shapes["layers"] = report["layers"]
            return {"ours": totals(report["layers"], "bestiary"), "burn": totals(report["layers"], "burn"),
                    "layers": per_layer(report["layers"], "bestiary"), "burn_layers": per_layer(report["layers"], "burn")}

        def pytorch(_round, arch=arch):
            if "layers" not in shapes:
                raise RuntimeError("no layer shapes: bestiary bench conv did not run")
            result = peer("conv_layers.py", "--layers", layers_file, "--threads", cfg.threads, "--repeats", repeats)
            if not result.ok:
                raise RuntimeError(result.fail_reason())
            timed = json.loads(result.lines[-1][1])["layers"]
            layers = [{**shape, "torch": t} for shape, t in zip(shapes["layers"], timed)]
            return {"ours": totals(layers, "torch"), "layers": per_layer(layers, "torch")}

        a = Contender("Bestiary kernels", "bestiary", bestiary)
        b = Contender(f"PyTorch {ctx['versions']['torch']}", "peer", pytorch)
        alternate([a, b], cfg.rounds, f"conv layers {arch}")
        settings = {"model": arch, "batch_size": batch, "image_size": size, "threads": cfg.threads,
                    "layers": len(shapes.get("layers", [])), "peak_gflops": peak}

        def pick(contender, group, key):
            """One side of a row from the per-round dicts: the samples of `group[key]`."""
            samples = [s[group][key] for s in contender.samples]
            return {"name": contender.name, "samples": samples, "median": median(samples),
                    "error": contender.errors[0] if contender.errors else None}

        for name in (*PASSES, "step"):
            ours, torch_side = pick(a, "ours", name), pick(b, "ours", name)
            burn = pick(a, "burn", name)
            share = f", {ours['median'] / peak:.0%} of peak" if peak and ours["median"] else ""
            before = f"; burn-flex route {burn['median']:.1f} GFLOP/s" if burn["median"] else ""
            rows.append(row("9 convolution", f"{arch} conv layers, {name}", settings, "throughput", "GFLOP/s",
                            ours, torch_side, detail=f"{share.lstrip(', ')}{before}"))
        for i, layer in enumerate(shapes.get("layers", [])):
            for name in PASSES:
                key = f"{i}:{name}"
                ours = pick(a, "layers", key)["median"]
                burn = pick(a, "burn_layers", key)["median"]
                torch_value = pick(b, "layers", key)["median"] if b.samples else None
                shape = f"x{layer['x']} w{layer['weight']} s{layer['stride'][0]}"
                detail = (f"burn-flex {burn:.1f}" if burn else "burn –") + \
                    (f", PyTorch {torch_value:.1f}" if torch_value else ", PyTorch –") + \
                    (f", {ours / peak:.0%} of peak" if peak and ours else "") + f"; ×{layer['count']}"
                rows.append(measurement("9 convolution layers", f"{arch} {shape}", settings, name, "GFLOP/s",
                                        value=ours, detail=detail))
    return rows
