#!/usr/bin/env python3
"""PyTorch's side of the device check, on the same GPU in the same run: torch.matmul GFLOP/s on
the GEMMs `sloragpu bench gemm` times (fp32 with TF32 off), and a ViT training step with Serial
LoRA r=8 in images/s, in fp32 eager (TF32 off) and under bf16 autocast. Pure torch (no
transformers), so it runs wherever torch does; the model is the one sloragpu trains: pre-norm
blocks, exact GELU, qkv bias, cls token and learned positions, the serial adapter
z = u + s (u A^T) B^T before q, k and v, a linear head on the cls token, AdamW on the adapters
and the head.

    python3 scripts/bench_torch_gpu.py --gemm-json sloragpu-gemm.jsonl --out torch.json [--device cuda] [--quick]

--gemm-json: the output of `sloragpu bench gemm --json` (one object per shape): the same shapes
are timed here and the ratio sloragpu / torch is printed per shape.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

CONFIGS = [("vit-s/14", 384, 12, 6, 14, 112, 32), ("vit-b/16", 768, 12, 12, 16, 224, 32)]


class SerialViT(torch.nn.Module):
    def __init__(self, width, layers, heads, patch, size, classes=10, rank=8):
        super().__init__()
        self.heads, self.patch = heads, patch
        tokens = (size // patch) ** 2 + 1
        self.embed = torch.nn.Conv2d(3, width, patch, patch)
        self.cls = torch.nn.Parameter(torch.zeros(1, 1, width))
        self.pos = torch.nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            block = torch.nn.ModuleDict({
                "norm1": torch.nn.LayerNorm(width, eps=1e-6), "qkv": torch.nn.Linear(width, 3 * width),
                "proj": torch.nn.Linear(width, width), "norm2": torch.nn.LayerNorm(width, eps=1e-6),
                "fc1": torch.nn.Linear(width, 4 * width), "fc2": torch.nn.Linear(4 * width, width),
            })
            block.A = torch.nn.Parameter(torch.randn(rank, width) / width ** 0.5)
            block.B = torch.nn.Parameter(torch.zeros(width, rank))
            self.blocks.append(block)
        self.norm = torch.nn.LayerNorm(width, eps=1e-6)
        self.head = torch.nn.Linear(width, classes)
        for name, parameter in self.named_parameters():
            parameter.requires_grad = name.endswith(".A") or name.endswith(".B") or name.startswith("head.")

    def forward(self, images):
        x = self.embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        batch, tokens, width = x.shape
        for block in self.blocks:
            u = block["norm1"](x)
            z = u + (u @ block.A.t()) @ block.B.t()
            q, k, v = block["qkv"](z).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
            attention = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
            x = x + block["proj"](attention)
            x = x + block["fc2"](F.gelu(block["fc1"](block["norm2"](x))))
        return self.head(self.norm(x)[:, 0])


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device, minimum=0.5, runs=3):
    function()
    synchronize(device)
    best = float("inf")
    for _ in range(runs):
        count, started = 0, time.perf_counter()
        while True:
            function()
            count += 1
            synchronize(device)
            elapsed = time.perf_counter() - started
            if elapsed >= minimum:
                break
        best = min(best, elapsed / count)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gemm-json", help="sloragpu bench gemm --json output")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny configurations and times (the device check's dry run)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    device, results = args.device, {"device": args.device, "torch": torch.__version__, "gemm": [], "train": []}
    if device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(0)
    minimum = 0.05 if args.quick else 0.5

    for line in open(args.gemm_json) if args.gemm_json else []:
        shape = json.loads(line)
        m, n, k = shape["m"], shape["n"], shape["k"]
        a = torch.randn(k, m, device=device).t() if shape["transpose_a"] else torch.randn(m, k, device=device)
        b = torch.randn(n, k, device=device).t() if shape["transpose_b"] else torch.randn(k, n, device=device)
        seconds = timed(lambda: a @ b, device, minimum)
        gflops = 2 * m * n * k / seconds / 1e9
        ratio = shape["gflops"] / gflops
        results["gemm"].append({"name": shape["name"], "m": m, "n": n, "k": k, "torch_gflops": gflops,
                                "sloragpu_gflops": shape["gflops"], "ratio": ratio})
        print(f"gemm {shape['name']:<28} {m}x{n}x{k}: torch {gflops:9.1f} GFLOP/s, sloragpu {shape['gflops']:9.1f}, ratio {ratio:.2f}", flush=True)

    configs = [("vit-ti/16", 192, 2, 3, 16, 32, 4)] if args.quick else CONFIGS
    for name, width, layers, heads, patch, size, batch in configs:
        model = SerialViT(width, layers, heads, patch, size).to(device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        images = torch.randn(batch, 3, size, size, device=device)
        labels = torch.arange(batch, device=device) % 10
        for precision in ["fp32", "bf16-autocast"]:
            def step():
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision != "fp32"):
                    loss = F.cross_entropy(model(images), labels)
                loss.backward()
                optimizer.step()
            seconds = timed(step, device, minimum, runs=2)
            results["train"].append({"model": name, "batch": batch, "precision": precision, "images_per_second": batch / seconds})
            print(f"train {name} {size} px batch {batch} serial r=8 {precision}: {batch / seconds:.1f} images/s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
