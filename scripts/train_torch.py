#!/usr/bin/env python3
"""The default sloragpu recipe in PyTorch, for side-by-side accuracy: DINOv2-S/14 (the converted
weights) + a linear head on the final-LayerNorm cls token, Fashion-MNIST at 112 px, the same
preparation (bilinear resize, grey -> RGB, ImageNet normalisation; training crops with zero
padding of 2 px at 28 px and horizontal flips), AdamW (no decay on biases, norms, cls and
positions), linear warm-up + cosine, clipping at norm 1, the same init rules (A Kaiming-uniform,
B zero, head U(+-1/sqrt(d)) with zero bias). Data order and augmentation draws come from torch's
RNG, not sloragpu's, so the numbers compare recipes, not bits.

    ENV/bin/python scripts/train_torch.py --method serial [--steps 300 --batch 32 --lr 1e-3]
"""
import argparse
import gzip
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Dinov2Model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_adapters import attach, trainable_groups  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"
MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def idx(name, offset):
    with gzip.open(os.path.join(DATA, name)) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def prepare(images, size, augment, generator):
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    if augment:
        pad = max(1, images.shape[1] // 10)
        padded = F.pad(x, (pad, pad, pad, pad))
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
            crop = padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
            out[i] = crop.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else crop
        x = out
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.repeat(1, 3, 1, 1) - MEAN) / STD


class Classifier(nn.Module):
    def __init__(self, backbone, classes):
        super().__init__()
        self.backbone = backbone
        width = backbone.config.hidden_size
        self.classifier = nn.Linear(width, classes)
        nn.init.uniform_(self.classifier.weight, -1 / math.sqrt(width), 1 / math.sqrt(width))
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        return self.classifier(self.backbone(pixel_values=x).pooler_output)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default="weights/dinov2-small")
    parser.add_argument("--method", default="serial", choices=["serial", "lora", "full", "probe"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-limit", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    train_x, train_y = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), idx("train-labels-idx1-ubyte.gz", 8)
    test_x, test_y = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28), idx("t10k-labels-idx1-ubyte.gz", 8)
    if args.test_limit:
        test_x, test_y = test_x[:args.test_limit], test_y[:args.test_limit]

    model = Classifier(Dinov2Model.from_pretrained(args.weights), 10)
    adapters = attach(model.backbone, args.method, rank=args.rank, alpha=float(args.rank))
    optimizer = torch.optim.AdamW(trainable_groups(model, args.method, adapters, args.lr, args.weight_decay))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    warmup = args.steps // 10
    # transformers' get_cosine_schedule_with_warmup as LambdaLR applies it: update `step` (1-based)
    # uses lambda(step - 1), as sloragpu does.
    def schedule(step):
        t = step - 1
        return t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, args.steps - warmup)))
    base_rates = [g["lr"] for g in optimizer.param_groups]
    print(f"{args.method}: {trainable} trainable parameters (head included)", flush=True)

    order, position, started = torch.randperm(len(train_y), generator=generator), 0, time.time()
    model.train()
    for step in range(1, args.steps + 1):
        if position + args.batch > len(order):
            order, position = torch.randperm(len(train_y), generator=generator), 0
        batch = order[position:position + args.batch].numpy()
        position += args.batch
        x = prepare(train_x[batch], args.image_size, True, generator)
        y = torch.from_numpy(train_y[batch].astype(np.int64))
        for group, rate in zip(optimizer.param_groups, base_rates):
            group["lr"] = rate * schedule(step)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        if step % 10 == 0 or step == 1:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} {step * args.batch / (time.time() - started):.1f} img/s", flush=True)

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_y), 64):
            x = prepare(test_x[start:start + 64], args.image_size, False, generator)
            correct += (model(x).argmax(-1).numpy() == test_y[start:start + 64]).sum()
    print(f"test accuracy {correct / len(test_y):.4f} ({len(test_y)} images) after {args.steps} steps in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
