"""PyTorch peer of `bestiary bench conv` (figure 9): times the forward pass, the input gradient
and the weight gradient of each convolution layer it is given (the shapes Bestiary's own networks
ran, from `bestiary bench conv --json`), with the same values layout (NCHW, fp32) and threads, as
the median of --repeats runs after one warm-up. The gradients are the two halves of
aten::convolution_backward that autograd runs in training. Prints one JSON line."""

import argparse
import json
import os
import time

import torch


def seconds(work, repeats):
    work()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return samples[len(samples) // 2]


def time_layer(layer, repeats):
    x = torch.rand(layer["x"]) - 0.5
    weight = torch.rand(layer["weight"]) - 0.5
    stride, padding, dilation, groups = layer["stride"], layer["padding"], layer["dilation"], layer["groups"]
    # Asymmetric padding does not occur in the networks measured; refuse rather than mismeasure.
    if any(before != after for before, after in padding):
        raise SystemExit(f"asymmetric padding {padding} is not supported by this peer")
    pad = [before for before, _ in padding]
    out = torch.nn.functional.conv2d(x, weight, None, stride, pad, dilation, groups)
    dy = torch.rand(out.shape) - 0.5

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, weight, None, stride, pad, dilation, False, [0, 0], groups, mask)

    with torch.no_grad():
        return {
            "forward": seconds(lambda: torch.nn.functional.conv2d(x, weight, None, stride, pad, dilation, groups), repeats),
            "input-gradient": seconds(backward([True, False, False]), repeats),
            "weight-gradient": seconds(backward([False, True, False]), repeats),
        }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layers", required=True, help="JSON file: `bestiary bench conv --json` output")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with open(a.layers) as f:
        layers = json.load(f)["layers"]
    print(json.dumps({"torch": torch.__version__, "layers": [time_layer(layer, a.repeats) for layer in layers]}))


if __name__ == "__main__":
    main()
