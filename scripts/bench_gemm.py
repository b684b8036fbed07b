#!/usr/bin/env python3
"""GEMM throughput of sloragpu against OpenBLAS (numpy float32 matmul, 2 threads), same shapes,
same run.

Runs `sloragpu bench gemm --json` and numpy on the GEMMs of one ViT-S/14 training step
(112 px, batch 32) plus square sizes, alternating rounds so both see the same machine state,
keeps each side's best time per shape, and prints GFLOP/s, the ratio per shape and the
geometric mean of the ratios.

    swift build -c release --product sloragpu
    python3 scripts/bench_gemm.py [--rounds 3] [--markdown]

OpenBLAS picks its kernel by CPU; some machines set OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE)
to an older core so that old OpenBLAS builds do not crash. That slows a current numpy, so this
script drops both for its own process only, and reports which kernel OpenBLAS runs.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

if os.environ.get("SLORAGPU_BENCH_CHILD") != "1":
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    env["OPENBLAS_NUM_THREADS"] = "2"
    env["SLORAGPU_BENCH_CHILD"] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import numpy as np  # noqa: E402  (imported after the environment is fixed)


def openblas_description():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "OpenBLAS (install threadpoolctl to see which kernel)"
    for pool in threadpool_info():
        if pool.get("internal_api") == "openblas":
            return f"OpenBLAS {pool.get('version')} kernel {pool.get('architecture')}, {pool.get('num_threads')} threads"
    return "no OpenBLAS found behind numpy"


def numpy_seconds(shape, min_seconds):
    rng = np.random.default_rng(0)
    m, n, k = shape["m"], shape["n"], shape["k"]
    a = rng.uniform(-1, 1, (k, m) if shape["transpose_a"] else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, k) if shape["transpose_b"] else (k, n)).astype(np.float32)
    op_a = a.T if shape["transpose_a"] else a
    op_b = b.T if shape["transpose_b"] else b
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(op_a, op_b, out=out)  # warm-up
    best, total, runs = math.inf, 0.0, 0
    while total < min_seconds or runs < 3:
        start = time.perf_counter()
        np.matmul(op_a, op_b, out=out)
        elapsed = time.perf_counter() - start
        best, total, runs = min(best, elapsed), total + elapsed, runs + 1
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", default=".build/release/sloragpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--filter", default=None)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    ours, theirs, shapes = {}, {}, {}
    for _ in range(args.rounds):
        command = [args.binary, "bench", "gemm", "--json", "--min-seconds", str(args.min_seconds)]
        if args.filter:
            command += ["--filter", args.filter]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        for line in result.stdout.splitlines():
            shape = json.loads(line)
            shapes[shape["name"]] = shape
            ours[shape["name"]] = min(ours.get(shape["name"], math.inf), shape["seconds"])
        for name, shape in shapes.items():
            theirs[name] = min(theirs.get(name, math.inf), numpy_seconds(shape, args.min_seconds))

    device = subprocess.run([args.binary, "devices"], check=True, capture_output=True, text=True).stdout
    selected = next((line for line in device.splitlines() if line.startswith("Selected:")), "")
    print(f"# sloragpu: {selected.removeprefix('Selected: ')}")
    print(f"# reference: numpy {np.__version__}, {openblas_description()}")
    if args.markdown:
        print("| shape | m | n | k | op | sloragpu GFLOP/s | OpenBLAS GFLOP/s | ratio |")
        print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for name, shape in shapes.items():
        flops = 2.0 * shape["m"] * shape["n"] * shape["k"]
        g_ours, g_theirs = flops / ours[name] / 1e9, flops / theirs[name] / 1e9
        ratio = g_ours / g_theirs
        ratios.append(ratio)
        op = ("T" if shape["transpose_a"] else "N") + ("T" if shape["transpose_b"] else "N")
        if args.markdown:
            print(f"| {name} | {shape['m']} | {shape['n']} | {shape['k']} | {op} | {g_ours:.1f} | {g_theirs:.1f} | {ratio:.2f} |")
        else:
            print(f"{name:<12} {shape['m']:5d} x {shape['n']:5d} x {shape['k']:5d} {op}  "
                  f"sloragpu {g_ours:7.1f}  OpenBLAS {g_theirs:7.1f} GFLOP/s  ratio {ratio:5.2f}")
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"geometric-mean ratio (sloragpu / OpenBLAS) over {len(ratios)} shapes: {geomean:.2f}")


if __name__ == "__main__":
    main()
