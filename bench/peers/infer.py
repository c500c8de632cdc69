"""Peer of `bestiary bench engine` (figure 4): inference throughput of onnxruntime (Python) on a
model's ONNX file, or of PyTorch on the twin network (nets.py; its weights do not change the
speed, so they are random, and batch norm stays unfused as in a plain `model.eval()`). The input
is the same synthetic batch Bestiary's side uses (a multiplicative hash of the index in [-1, 1)).
Prints one JSON object."""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def bench_input(batch, size):
    n = batch * 3 * size * size
    x = (np.arange(n, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)
    return (x.astype(np.float64) / float(1 << 32) * 2.0 - 1.0).astype(np.float32).reshape(batch, 3, size, size)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--framework", choices=["onnxruntime", "pytorch"], required=True)
    p.add_argument("--model-dir", required=True, help="a Bestiary model version folder")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    meta = json.load(open(os.path.join(a.model_dir, "model.json")))
    size = meta["input"]["image_size"]
    x = bench_input(a.batch_size, size)

    if a.framework == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = a.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(os.path.join(a.model_dir, "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        output = [session.get_outputs()[0].name]

        def infer():
            session.run(output, {name: x})

        version = ort.__version__
    else:
        import torch
        from nets import build

        torch.set_num_threads(a.threads)
        config = meta.get("architecture_config") or {}
        model = build(meta["architecture"], len(meta["classes"]), config.get("width", 32), config.get("depth", 4)).eval()
        tensor = torch.from_numpy(x)

        def infer():
            with torch.inference_mode():
                model(tensor)

        version = torch.__version__

    for _ in range(a.warmup):
        infer()
    times = []
    for _ in range(a.iterations):
        started = time.perf_counter()
        infer()
        times.append(time.perf_counter() - started)
    times.sort()
    print(json.dumps({
        "framework": a.framework,
        "version": version,
        "image_size": size,
        "batch_size": a.batch_size,
        "threads": a.threads,
        "iterations": a.iterations,
        "images_per_second": a.iterations * a.batch_size / sum(times),
        "median_batch_ms": statistics.median(times) * 1e3,
    }))


if __name__ == "__main__":
    main()
