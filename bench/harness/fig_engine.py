"""Figure 4: inference engine throughput, preprocessed tensors in, predictions out, at batch 1
and 32: each Bestiary engine (`bestiary bench engine --engine ort|tract|burn`) against
onnxruntime in Python on the same ONNX file and PyTorch on the twin network, for the built-in
model (EfficientNet-Lite0 + animal head, 224 px, fp16-stored weights) and a seed CNN (128 px)
trained for one epoch by Bestiary. Every contender gets the same synthetic input. Beside them,
in the same alternating rounds, `bestiary ort int8` runs the int8 graph `bestiary export --int8`
writes for a copy of each model (calibrated on the animals10 training photos), with its speed
against fp32 onnxruntime as its own rows."""

import json
import os
import shutil

from . import data
from .common import BESTIARY, ROOT, WORK, Contender, alternate, peer, row, run, side


def version_dir(model_root):
    with open(os.path.join(model_root, "latest")) as f:
        return os.path.join(model_root, json.load(f)["version"])


def seed_cnn_model(cfg):
    """A seed CNN version trained by Bestiary for one epoch (its speed is what matters)."""
    out = os.path.join(WORK, "engine-models")
    root = os.path.join(out, "seed-cnn")
    if not os.path.exists(os.path.join(root, "latest")):
        shutil.rmtree(out, ignore_errors=True)
        result = run([BESTIARY, "train", "--data", data.animals(cfg.quick), "--out", out, "--name", "seed-cnn",
                      "--arch", "seed-cnn", "--epochs", 1, "--image-size", 128, "--quiet",
                      "--cache-dir", os.path.join(WORK, "cache", "train-128")], env=cfg.bestiary_env)
        if not result.ok:
            raise RuntimeError(f"training the seed CNN failed: {result.fail_reason()}")
    return version_dir(root)


def int8_model(cfg, model_dir, name):
    """A copy of the version at `model_dir` with the int8 graph `bestiary export --int8` writes,
    calibrated on the animals10 training photos; None (with the reason) when that fails."""
    root = os.path.join(WORK, "engine-models-int8", name)
    version = os.path.basename(model_dir)
    copy = os.path.join(root, version)
    if not os.path.exists(os.path.join(copy, "model.int8.onnx")):
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(model_dir, copy)
        with open(os.path.join(root, "latest"), "w") as f:
            json.dump({"version": version}, f)
        result = run([BESTIARY, "export", "--model", copy, "--int8", "--calibration-data", data.animals(cfg.quick),
                      "--quiet", "--cache-dir", os.path.join(WORK, "cache", "int8")], env=cfg.bestiary_env)
        if not result.ok:
            return None, result.fail_reason()
    return copy, None


def parse(result):
    if not result.ok:
        raise RuntimeError(result.fail_reason())
    text = "\n".join(line for _, line in result.lines)
    return json.loads(text[text.index("{"):])["images_per_second"]


def figure(cfg, ctx):
    models = [("built-in animals (EfficientNet-Lite0)", "efficientnet-lite0", version_dir(os.path.join(ROOT, "models", "animals")), 224)]
    try:
        models.append(("seed CNN", "seed-cnn", seed_cnn_model(cfg), 128))
    except RuntimeError as error:
        ctx["notes"].append(f"engine figure: no seed CNN model: {error}")
    rows = []
    window = 0.5 if cfg.quick else 3.0  # seconds of timed calls per run
    for label, arch, model_dir, size in models:
        int8_dir, int8_error = int8_model(cfg, model_dir, arch)
        if int8_error:
            ctx["notes"].append(f"engine figure: no int8 graph for {label}: {int8_error}")
        for batch in (1, 32):

            def calibrated(command, batch=batch):
                """Runs `command(iterations)`; the first call times a few calls to choose the
                iteration count that fills `window` seconds, the same window for every side."""
                state = {}

                def measure(_round):
                    if "iterations" not in state:
                        rate = parse(command(2))
                        state["iterations"] = max(2, round(window * rate / batch))
                    return parse(command(state["iterations"]))

                return measure

            def bestiary(engine, batch=batch, model_dir=model_dir, precision="fp32"):
                name = f"bestiary {engine}" + (f" {precision}" if precision != "fp32" else "")
                return Contender(name, "bestiary", calibrated(lambda n: run(
                    [BESTIARY, "bench", "engine", "--model", model_dir, "--engine", engine, "--batch-size", batch,
                     "--precision", precision, "--iterations", n, "--threads", cfg.threads, "--json", "--quiet"],
                    env=cfg.bestiary_env)))

            def python(framework, batch=batch, model_dir=model_dir):
                name = {"onnxruntime": f"onnxruntime {ctx['versions']['onnxruntime']} (Python)",
                        "pytorch": f"PyTorch {ctx['versions']['torch']}"}[framework]
                return Contender(name, "peer", calibrated(lambda n: peer(
                    "infer.py", "--framework", framework, "--model-dir", model_dir, "--batch-size", batch,
                    "--iterations", n, "--threads", cfg.threads)))

            engines = ["ort", "tract"] + (["burn"] if arch != "efficientnet-lite0" else [])
            ours = [bestiary(e) for e in engines]
            peers = [python("onnxruntime"), python("pytorch")]
            int8 = [bestiary("ort", model_dir=int8_dir, precision="int8")] if int8_dir else []
            alternate(ours + int8 + peers, cfg.rounds, f"engine {arch} batch {batch}")
            flops = ctx["flops"](arch, size)
            settings = {"model": label, "batch_size": batch, "image_size": size, "threads": cfg.threads,
                        "timed window": f"~{window:g} s of calls per run after warm-up", "input": "synthetic, preprocessed"}
            for ours_side in ours:
                for peer_side in peers:
                    rows.append(row("4 engine", f"{label}, batch {batch}", settings, "inference throughput", "img/s",
                                    side(ours_side), side(peer_side), gflop_per_image=flops["forward_gflop"]))
            for int8_side in int8:
                # int8 against fp32 onnxruntime (ours[0] is `bestiary ort`): the ratio is int8's speed-up.
                rows.append(row("4 engine", f"{label}, batch {batch}, int8 vs fp32", settings, "inference throughput",
                                "img/s", side(int8_side), side(ours[0]), gflop_per_image=flops["forward_gflop"]))
                for peer_side in peers:
                    rows.append(row("4 engine", f"{label}, batch {batch}", settings, "inference throughput", "img/s",
                                    side(int8_side), side(peer_side), gflop_per_image=flops["forward_gflop"]))
    return rows
