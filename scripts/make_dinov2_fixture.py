#!/usr/bin/env python3
"""Writes Tests/Fixtures/dinov2/fashion_mnist_112.safetensors: a real Fashion-MNIST test image
prepared for DINOv2-S/14 at 112 px, and what transformers' Dinov2Model computes on it from the
converted checkpoint (scripts/convert_dinov2.py). Run by hand; the Swift test compares against it
when the converted weights are present.

    ENV/bin/python scripts/make_dinov2_fixture.py [--weights weights/dinov2-small] [--index 0]

Preparation (what sloragpu's data pipeline must match): uint8 28 x 28 -> [0, 1] -> bilinear
resize to 112 (align_corners False, no antialiasing) -> grey replicated to 3 channels ->
normalised with ImageNet mean and std.
"""
import argparse
import gzip
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Dinov2Model

FASHION = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "dinov2", "fashion_mnist_112.safetensors")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default="weights/dinov2-small")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args()
    with gzip.open(FASHION) as f:
        data = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    grey = torch.from_numpy(data[args.index].astype(np.float32) / 255.0)[None, None]
    resized = F.interpolate(grey, size=(112, 112), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    image = (resized.repeat(1, 3, 1, 1) - mean) / std

    model, info = Dinov2Model.from_pretrained(args.weights, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        out = model.eval()(pixel_values=image)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({"image": image.contiguous().clone(), "pooled": out.pooler_output.contiguous().clone(),
               "tokens": out.last_hidden_state.contiguous().clone()}, OUT, metadata={"index": str(args.index)})
    print(f"wrote {os.path.normpath(OUT)}: pooled norm {out.pooler_output.norm():.4f}")


if __name__ == "__main__":
    main()
