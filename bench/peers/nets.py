"""The PyTorch twins of Bestiary's networks (crates/networks/src/arch.rs and efficientnet.rs), layer
for layer, so that both sides of a comparison compute the same thing.

- SeedCnn: `depth` blocks of 3x3 conv (no bias) + batch norm + ReLU + 2x2 max-pool, channels
  `width * 2**min(block, 3)`, then global average pool and a linear head.
- ResNet18/34: torchvision's layout (7x7/2 stem, 3x3/2 max-pool, basic blocks with 1x1
  projections), the same as Bestiary's.
- EfficientNetLite0: the efficientnet_lite_pytorch layout with the parameter names of
  ../shared/models/efficientnet_lite0/efficientnet_lite0.safetensors, ReLU6, batch norm eps 1e-3,
  TensorFlow "SAME" pads for 224 px (more at the bottom/right on stride-2 layers).
"""

import torch
from torch import nn
import torch.nn.functional as F


def conv_bn_relu(cin, cout, kernel, stride=1, relu=True):
    layers = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SeedCnn(nn.Module):
    def __init__(self, classes, width=32, depth=4):
        super().__init__()
        blocks, channels = [], 3
        for block in range(max(depth, 1)):
            out = max(width, 1) * (1 << min(block, 3))
            blocks += [conv_bn_relu(channels, out, 3), nn.MaxPool2d(2, 2)]
            channels = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.features(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.first = conv_bn_relu(cin, cout, 3, stride)
        self.second = conv_bn_relu(cout, cout, 3, 1, relu=False)
        self.projection = (
            conv_bn_relu(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x):
        skip = x if self.projection is None else self.projection(x)
        return F.relu(self.second(self.first(x)) + skip)


class ResNet(nn.Module):
    def __init__(self, classes, layers=18):
        super().__init__()
        counts = [3, 4, 6, 3] if layers == 34 else [2, 2, 2, 2]
        self.stem = conv_bn_relu(3, 64, 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks, channels = [], 64
        for stage, count in enumerate(counts):
            out = 64 << stage
            for index in range(count):
                blocks.append(BasicBlock(channels, out, 2 if stage > 0 and index == 0 else 1))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.blocks(self.pool(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# (expand ratio, kernel, stride of the first block, output channels, repeats)
LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def same_pad(size, kernel, stride):
    """TensorFlow "SAME" pads (left, right, top, bottom) and the output size for a square input."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before, after = total // 2, total - total // 2
    return (before, after, before, after), out


class SameConv(nn.Conv2d):
    """A bias-free convolution with fixed "SAME" pads computed for its input size."""

    def __init__(self, cin, cout, kernel, stride, groups, size):
        super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=False)
        self.pads, self.out_size = same_pad(size, kernel, stride)

    def forward(self, x):
        return super().forward(F.pad(x, self.pads) if any(self.pads) else x)


class MbConv(nn.Module):
    def __init__(self, cin, cout, expand, kernel, stride, size):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = SameConv(cin, hidden, 1, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3)
        else:
            self._expand_conv = None
        self._depthwise_conv = SameConv(hidden, hidden, kernel, stride, hidden, size)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3)
        self.out_size = self._depthwise_conv.out_size
        self._project_conv = SameConv(hidden, cout, 1, 1, 1, self.out_size)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self._expand_conv is not None:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    def __init__(self, classes=1000, size=224):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, 1, size)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        size, channels, blocks = self._conv_stem.out_size, 32, []
        for expand, kernel, stride, out, repeats in LITE0_STAGES:
            for index in range(repeats):
                block = MbConv(channels, out, expand, kernel, stride if index == 0 else 1, size)
                blocks.append(block)
                channels, size = out, block.out_size
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(channels, 1280, 1, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, classes)

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):
        return self._fc(self.features(x))


def load_lite0_reference(path, classes=1000):
    """EfficientNet-Lite0 with the reference ImageNet weights; a new random `classes`-way head
    when `classes` is not 1000."""
    from safetensors.torch import load_file

    state = load_file(path)
    model = EfficientNetLite0(1000)
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    if classes != 1000:
        model._fc = nn.Linear(1280, classes)
    return model


def build(arch, classes, width=32, depth=4):
    """A network by Bestiary's `--arch` name."""
    if arch == "seed-cnn":
        return SeedCnn(classes, width, depth)
    if arch in ("resnet", "resnet18", "resnet-18"):
        return ResNet(classes, 18)
    if arch in ("resnet34", "resnet-34"):
        return ResNet(classes, 34)
    if arch == "efficientnet-lite0":
        return EfficientNetLite0(classes)
    raise ValueError(f"unknown architecture {arch!r}")
