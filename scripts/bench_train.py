#!/usr/bin/env python3
"""Training-step throughput and peak memory: sloragpu (`bench train`) against PyTorch CPU
(2 threads; transformers' ViTForImageClassification with the same adapters), same config,
same run, alternating rounds; prints each and the ratios. PyTorch runs fp32 eager and, with
one line, `torch.autocast("cpu", dtype=torch.bfloat16)` (its Linear layers through oneDNN's
bf16 kernels where the CPU has them): --torch fp32,bf16 (the default) measures both.

    swift build -c release --product sloragpu
    ENV/bin/python scripts/bench_train.py [--method serial] [--model vit-s --patch 14 --image-size 112 --batch 32] [--matmul fp32,bf16]

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
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            logits = model(pixel_values=images).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
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
    parser.add_argument("--activations", default="selective", help="sloragpu's activation plan: selective (the default), recompute, keep-bf16 or keep")
    parser.add_argument("--weights", default="fp16", help="sloragpu's frozen-weight storage: fp32, fp16, bf16 or int8")
    parser.add_argument("--matmul", default="fp32", help="sloragpu's products, comma-separated: fp32 (the default) and bf16 (--matmul bf16)")
    parser.add_argument("--torch", default="fp32,bf16", help="PyTorch variants, comma-separated: fp32 (eager) and bf16 (autocast)")
    parser.add_argument("--autocast", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(args)

    common = ["--model", args.model, "--patch", str(args.patch), "--image-size", str(args.image_size), "--batch", str(args.batch),
              "--method", args.method, "--rank", str(args.rank), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    variants = [v.strip() for v in args.torch.split(",") if v.strip()]
    for variant in variants:
        if variant not in ("fp32", "bf16"):
            parser.error(f"--torch: unknown variant '{variant}' (fp32 or bf16)")
    precisions = [p.strip() for p in args.matmul.split(",") if p.strip()]
    for precision in precisions:
        if precision not in ("fp32", "bf16"):
            parser.error(f"--matmul: unknown precision '{precision}' (fp32 or bf16)")
    ours, theirs = {p: [] for p in precisions}, {v: [] for v in variants}
    for _ in range(args.rounds):
        for precision in precisions:
            command = [args.binary, "bench", "train", "--json", "--activations", args.activations, "--weights", args.weights, "--matmul", precision] + common
            run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            if run["programs_compiled"] > 0:
                # Its peak RSS measured the OpenCL compiler too: again, from the kernel cache.
                run = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            ours[precision].append(run)
        env = dict(os.environ, OMP_NUM_THREADS="2")
        for variant in variants:
            worker = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--autocast", variant] + common
            output = subprocess.run(worker, check=True, capture_output=True, text=True, env=env).stdout
            theirs[variant].append(json.loads(output.strip().splitlines()[-1]))
    best = lambda runs: max(runs, key=lambda r: r["images_per_second"])
    print(f"config: {args.model}/{args.patch} at {args.image_size} px, batch {args.batch}, {args.method} r={args.rank}, "
          f"sloragpu activations: {args.activations}, weights: {args.weights}; best of {args.rounds} alternating rounds")
    for precision in precisions:
        a = best(ours[precision])
        print(f"{'sloragpu ' + precision + ':':<20} {a['images_per_second']:.2f} images/s, peak RSS {a['peak_rss_bytes'] / 1e6:.0f} MB "
              f"({a['trainable']} trainable)")
    for variant in variants:
        b = best(theirs[variant])
        label = "PyTorch fp32:" if variant == "fp32" else "PyTorch bf16ac:"
        ratios = "; ".join(f"sloragpu {p} / this: throughput {best(ours[p])['images_per_second'] / b['images_per_second']:.2f}x, "
                           f"peak memory {best(ours[p])['peak_rss_bytes'] / b['peak_rss_bytes']:.2f}x" for p in precisions)
        print(f"{label:<20} {b['images_per_second']:.2f} images/s, peak RSS {b['peak_rss_bytes'] / 1e6:.0f} MB ({b['trainable']} trainable); {ratios}")

if __name__ == "__main__":
    main()
