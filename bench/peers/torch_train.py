"""PyTorch peer of `bestiary train` from scratch (figures 1 and 2): the same network (nets.py),
optimiser and schedule as Bestiary's defaults (AdamW lr 2e-3, weight decay 1e-4, eps 1e-5 as
burn's AdamW, label smoothing 0.1, linear warm-up then cosine to zero, stepped per batch), the
same augmentation (RandomResizedCrop scale 0.25-1, flip, ColorJitter 0.3/0.3/0.3, ImageNet
normalisation) and evaluation transform (resize to size/0.875, centre crop), fed by a torchvision
ImageFolder + DataLoader as a PyTorch user would write it. `--recipe fast` is `bestiary train
--recipe fast` in PyTorch: SGD with Nesterov momentum 0.9 at lr 0.05, weight decay 5e-4, linear
warm-up from lr/5 then a straight line to zero, label smoothing 0.2, and for augmentation the
evaluation resize followed by a random crop of the evaluation size (a shift of up to an eighth
of the crop) and a flip. Prints one JSON line per epoch with the keys of `bestiary train
--json`."""

import argparse
import json
import math
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, os.path.dirname(__file__))
from nets import build  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--validation", required=True)
    p.add_argument("--arch", default="seed-cnn")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--recipe", choices=["standard", "fast"], default="standard")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    fast = a.recipe == "fast"
    defaults = {"lr": 0.05, "weight_decay": 5e-4, "label_smoothing": 0.2} if fast else \
        {"lr": 2e-3, "weight_decay": 1e-4, "label_smoothing": 0.1}
    for name, value in defaults.items():
        if getattr(a, name) is None:
            setattr(a, name, value)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    size = a.image_size
    if fast:
        train_tf = transforms.Compose([
            transforms.Resize(round(size / 0.875)),
            transforms.RandomCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])
    else:
        train_tf = transforms.Compose([
            transforms.RandomResizedCrop(size, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ])
    eval_tf = transforms.Compose([
        transforms.Resize(round(size / 0.875)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    train_set = datasets.ImageFolder(a.train, train_tf)
    val_set = datasets.ImageFolder(a.validation, eval_tf)
    loader_args = dict(batch_size=a.batch_size, num_workers=a.workers, persistent_workers=a.workers > 0)
    train_loader = DataLoader(train_set, shuffle=True, **loader_args)
    val_loader = DataLoader(val_set, shuffle=False, **loader_args)

    model = build(a.arch, len(train_set.classes))
    if fast:
        optimizer = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, nesterov=True,
                                    weight_decay=a.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay, eps=1e-5)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)
    steps = len(train_loader)
    total, warmup = steps * a.epochs, round(a.warmup_epochs * steps)

    def lr_at(step):
        if fast:
            if step < warmup:
                return a.lr / 5 + (a.lr - a.lr / 5) * step / warmup
            return a.lr * min(max(1 - (step - warmup) / max(total - warmup, 1), 0.0), 1.0)
        if step < warmup:
            return a.lr * (step + 1) / warmup
        progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
        return a.lr * 0.5 * (1 + math.cos(math.pi * progress))

    for epoch in range(a.epochs):
        model.train()
        started = time.perf_counter()
        seen = right = 0
        loss_sum = 0.0
        for i, (images, labels) in enumerate(train_loader):
            lr = lr_at(epoch * steps + i)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = model(images)
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            right += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
        train_seconds = time.perf_counter() - started
        model.eval()
        v_seen = v_right = 0
        v_loss = 0.0
        with torch.inference_mode():
            for images, labels in val_loader:
                logits = model(images)
                v_loss += loss_fn(logits, labels).item() * len(labels)
                v_right += (logits.argmax(1) == labels).sum().item()
                v_seen += len(labels)
        print(json.dumps({
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_accuracy": right / seen,
            "validation_loss": v_loss / max(v_seen, 1),
            "validation_accuracy": v_right / max(v_seen, 1),
            "learning_rate": lr,
            "images_per_second": seen / train_seconds,
            "seconds": time.perf_counter() - started,
        }), flush=True)


if __name__ == "__main__":
    main()
