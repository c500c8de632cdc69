"""Figure 4: inference engine throughput, preprocessed tensors in, predictions out, at batch 1
and 32: each Bestiary engine (`bestiary bench engine --engine ort|tract|burn`) against
onnxruntime in Python on the same ONNX file and PyTorch on the twin network, for the built-in
model (EfficientNet-Lite0 + animal head, 224 px, fp16-stored weights) and a seed CNN (128 px)
trained for one epoch by Bestiary. Every contender gets the same synthetic input."""

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

            def bestiary(engine, batch=batch, model_dir=model_dir):
                return Contender(f"bestiary {engine}", "bestiary", calibrated(lambda n: run(
                    [BESTIARY, "bench", "engine", "--model", model_dir, "--engine", engine, "--batch-size", batch,
                     "--iterations", n, "--threads", cfg.threads, "--json", "--quiet"], env=cfg.bestiary_env)))

            def python(framework, batch=batch, model_dir=model_dir):
                name = {"onnxruntime": f"onnxruntime {ctx['versions']['onnxruntime']} (Python)",
                        "pytorch": f"PyTorch {ctx['versions']['torch']}"}[framework]
                return Contender(name, "peer", calibrated(lambda n: peer(
                    "infer.py", "--framework", framework, "--model-dir", model_dir, "--batch-size", batch,
                    "--iterations", n, "--threads", cfg.threads)))

            engines = ["ort", "tract"] + (["burn"] if arch != "efficientnet-lite0" else [])
            ours = [bestiary(e) for e in engines]
            peers = [python("onnxruntime"), python("pytorch")]
            alternate(ours + peers, cfg.rounds, f"engine {arch} batch {batch}")
            flops = ctx["flops"](arch, size)
            settings = {"model": label, "batch_size": batch, "image_size": size, "threads": cfg.threads,
                        "timed window": f"~{window:g} s of calls per run after warm-up", "input": "synthetic, preprocessed"}
            for ours_side in ours:
                for peer_side in peers:
                    rows.append(row("4 engine", f"{label}, batch {batch}", settings, "inference throughput", "img/s",
                                    side(ours_side), side(peer_side), gflop_per_image=flops["forward_gflop"]))
    return rows
