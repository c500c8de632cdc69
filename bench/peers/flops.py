"""Counts a network's floating-point operations per image with PyTorch's FlopCounterMode
(convolutions and matrix products, 2 per multiply-add), for inference (forward) and for a
training step (forward + backward), on the twin networks of nets.py. Prints JSON. The harness
uses the training count only for the seed CNN and ResNet: for EfficientNet-Lite0 the counter
charges depthwise convolutions' backward as dense ones, which overstates it."""

import argparse
import json
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(__file__))
from nets import build  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--classes", type=int, default=10)
    a = p.parse_args()
    batch = 2
    model = build(a.arch, a.classes)
    x = torch.zeros(batch, 3, a.image_size, a.image_size)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    forward = counter.get_total_flops() / batch
    model.train()
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    train = counter.get_total_flops() / batch
    print(json.dumps({"arch": a.arch, "image_size": a.image_size,
                      "forward_gflop": forward / 1e9, "train_step_gflop": train / 1e9}))


if __name__ == "__main__":
    main()
