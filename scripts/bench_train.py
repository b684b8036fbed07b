#!/usr/bin/env python3
"""Training-step throughput and peak memory: sloragpu (`bench train`) against PyTorch CPU
(2 threads; transformers' ViTForImageClassification with the same adapters), same config,
same run, alternating rounds; prints both and the ratios.

    swift build -c release --product sloragpu
    ENV/bin/python scripts/bench_train.py [--method serial] [--model vit-s --patch 14 --image-size 112 --batch 32]

ENV: python3 -m venv ENV && ENV/bin/pip install torch==2.13.0 transformers
Both sides use random weights (throughput does not depend on them).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

PRESETS = {"vit-ti": (192, 12, 3), "vit-s": (384, 12, 6), "vit-b": (768, 12, 12), "vit-l": (1024, 24, 16)}


def torch_worker(args):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_adapters import attach, trainable_groups

    torch.set_num_threads(2)
    torch.manual_seed(0)
    width, layers, heads = PRESETS[args.model]
    config = ViTConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width,
                       image_size=args.image_size, patch_size=args.patch, num_labels=10, layer_norm_eps=1e-6,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = ViTForImageClassification(config).train()
    adapters = attach(model, args.method, rank=args.rank, alpha=float(args.rank))
    optimizer = torch.optim.AdamW(trainable_groups(model, args.method, adapters, 1e-4, 0.01))
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.arange(args.batch) % 10

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=images).logits, labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(json.dumps({"images_per_second": args.batch / seconds, "step_seconds": seconds, "trainable": trainable,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=".build/release/sloragpu")
    parser.add_argument("--model", default="vit-s")
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--method", default="serial")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--activations", default="recompute", help="sloragpu's activation plan: recompute or keep")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(args)

    common = ["--model", args.model, "--patch", str(args.patch), "--image-size", str(args.image_size), "--batch", str(args.batch),
              "--method", args.method, "--rank", str(args.rank), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(json.loads(subprocess.run([args.binary, "bench", "train", "--json", "--activations", args.activations] + common,
                                              check=True, capture_output=True, text=True).stdout))
        env = dict(os.environ, OMP_NUM_THREADS="2")
        theirs.append(json.loads(subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker"] + common, check=True,
                                                capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]))
    best = lambda runs: max(runs, key=lambda r: r["images_per_second"])
    a, b = best(ours), best(theirs)
    print(f"config: {args.model}/{args.patch} at {args.image_size} px, batch {args.batch}, {args.method} r={args.rank}, "
          f"sloragpu activations: {args.activations}")
    print(f"sloragpu: {a['images_per_second']:.2f} images/s, peak RSS {a['peak_rss_bytes'] / 1e6:.0f} MB ({a['trainable']} trainable)")
    print(f"PyTorch:  {b['images_per_second']:.2f} images/s, peak RSS {b['peak_rss_bytes'] / 1e6:.0f} MB ({b['trainable']} trainable)")
    print(f"ratio (sloragpu / PyTorch): throughput {a['images_per_second'] / b['images_per_second']:.2f}x, "
          f"peak memory {a['peak_rss_bytes'] / b['peak_rss_bytes']:.2f}x")


if __name__ == "__main__":
    main()
