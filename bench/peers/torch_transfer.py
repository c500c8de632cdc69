"""PyTorch peer of `bestiary train --arch efficientnet-lite0` (figure 3): a typical fine-tuning
script. EfficientNet-Lite0 with the reference ImageNet weights (nets.py, from the same
safetensors file Bestiary reads), backbone frozen in eval mode, a new linear head trained with
Adam on augmented photos (RandomResizedCrop 224 + flip), every epoch running the photos through
the backbone again, as most tutorials do. Preprocessing as the weights' README says: (x-127)/128,
evaluation by resizing the shorter side to 256 and centre-cropping 224. Prints one JSON line per
epoch and a final line with the best validation accuracy (the epoch kept, as Bestiary keeps its
best epoch)."""

import argparse
import json
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, os.path.dirname(__file__))
from nets import load_lite0_reference  # noqa: E402

STARTED = time.perf_counter()
MEAN, STD = [127 / 255] * 3, [128 / 255] * 3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workers", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(42)

    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    eval_tf = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    train_set = datasets.ImageFolder(a.train, train_tf)
    val_set = datasets.ImageFolder(a.validation, eval_tf)
    loader_args = dict(batch_size=a.batch_size, num_workers=a.workers, persistent_workers=a.workers > 0)
    train_loader = DataLoader(train_set, shuffle=True, **loader_args)
    val_loader = DataLoader(val_set, **loader_args)

    model = load_lite0_reference(a.weights, classes=len(train_set.classes))
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("_fc.")
    optimizer = torch.optim.Adam(model._fc.parameters(), lr=a.lr)
    loss_fn = nn.CrossEntropyLoss()
    best = 0.0
    for epoch in range(a.epochs):
        model.eval()  # frozen backbone: batch norm keeps its ImageNet statistics
        started = time.perf_counter()
        for images, labels in train_loader:
            with torch.no_grad():
                features = model.features(images)
            loss = loss_fn(model._fc(features), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        right = seen = 0
        with torch.inference_mode():
            for images, labels in val_loader:
                right += (model(images).argmax(1) == labels).sum().item()
                seen += len(labels)
        best = max(best, right / seen)
        print(json.dumps({"epoch": epoch, "validation_accuracy": right / seen,
                          "seconds": time.perf_counter() - started}), flush=True)
    print(json.dumps({"best_validation_accuracy": best, "seconds": time.perf_counter() - STARTED}), flush=True)


if __name__ == "__main__":
    main()
