#!/usr/bin/env bash
# The device check: one command that, on a GPU machine where time is short, probes OpenCL,
# checks the GPU kernels against the references, tunes the GEMM, and benchmarks sloragpu beside
# PyTorch on the same GPU in the same run, writing one report. See docs/BENCHMARKS.md ("The
# device check") for the report's format and what the numbers mean.
#
#   scripts/make-device-bundle.sh                # here: static sloragpu + the libraries it loads
#   scripts/device-check.sh [--out DIR]          # there: in the repository root, bundle beside it
#   scripts/device-check.sh --dry-run            # here, on PoCL: the same steps at toy sizes
#   scripts/device-check.sh --skip tune          # leaves out a step (repeatable): on a GPU whose
#                                                # tiles are committed, tuning again costs 160 s
#   scripts/device-check.sh --tile-table         # instead of the check: the training step of ViT-S
#                                                # and ViT-B with each of several large tiles forced
#
# The GPU machine needs no Swift toolchain and no package registry: the bundle
# (device-bundle/: bin/sloragpu linked with the Swift runtime statically, lib/ with the OpenCL
# ICD loader, libpng, libturbojpeg and zlib) carries everything. If the machine has no OpenCL ICD
# file for NVIDIA, one naming the driver's libnvidia-opencl.so.1 is written and used. Every step
# has its own time limit, and a step that would start after DEVICE_CHECK_SECONDS (default 540) is
# skipped, so even with every step hanging the check ends inside the device tool's 10 minutes per
# command; a normal run on a GPU takes about 5.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=$root/device-bundle
out=$root/device-check-out
dry=0
tile_table=0
skipped=" "
usage() { echo "usage: $0 [--dry-run] [--bundle DIR] [--out DIR] [--skip STEP]... [--tile-table]" >&2; exit 64; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --tile-table) tile_table=1 ;;
        --bundle) [ $# -ge 2 ] || usage; bundle=$2; shift ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift ;;
        --skip) [ $# -ge 2 ] || usage; skipped="$skipped$2 "; shift ;;
        *) usage ;;
    esac
    shift
done
deadline=$(( $(date +%s) + ${DEVICE_CHECK_SECONDS:-540} ))
mkdir -p "$out"
bin=${SLORAGPU_BIN:-$bundle/bin/sloragpu}
if [ -z "${SLORAGPU_BIN:-}" ] && [ ! -x "$bin" ] && [ -f "$bin.gz" ]; then
    gunzip -c "$bin.gz" > "$out/sloragpu" && chmod +x "$out/sloragpu"
    bin=$out/sloragpu
fi
report=$out/device-check-report.md
summary=$out/summary.tsv
: > "$summary"
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SLORAGPU_CACHE_DIR=$out/cache
failed=0

{
    echo "# sloragpu device check"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- mode: $([ $dry = 1 ] && echo 'dry run (PoCL, toy sizes, GPU kernels forced)' || echo 'GPU')"
    echo "- host: $(uname -srm), $(nproc) cores"
    echo "- binary: $bin ($("$bin" --version 2>/dev/null || echo 'does not start'))"
    echo
} > "$report"

# step NAME SECONDS COMMAND...: runs it under a time limit, keeps its output in NAME.log and in
# the report, and records status and duration.
step() {
    local name=$1 limit=$2
    shift 2
    local started status
    if [[ "$skipped" == *" $name "* ]]; then
        echo "## $name (skipped: --skip $name)" >> "$report"
        printf '%s\tskipped\t0\n' "$name" >> "$summary"
        return 0
    fi
    # Never past the deadline: a step is skipped, or cut to the time that is left.
    local left=$(( deadline - $(date +%s) ))
    if [ "$left" -le 5 ]; then
        echo "## $name (skipped: the check's time is up)" >> "$report"
        printf '%s\tskipped\t0\n' "$name" >> "$summary"
        failed=1
        return 1
    fi
    [ "$limit" -le "$left" ] || limit=$left
    started=$(date +%s.%N)
    echo "== $name: $*"
    timeout --kill-after=5 "$limit" "$@" > "$out/$name.log" 2>&1
    status=$?
    local seconds
    seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    tail -n 40 "$out/$name.log"
    {
        echo "## $name (exit $status, $seconds s)"
        echo
        echo '```'
        echo "\$ $*"
        cat "$out/$name.log"
        echo '```'
        echo
    } >> "$report"
    printf '%s\t%s\t%s\n' "$name" "$status" "$seconds" >> "$summary"
    [ "$status" = 0 ] || failed=1
    return "$status"
}

# 1. Probe. NVIDIA's driver may be mounted outside the loader's path, and the ICD file absent.
if [ $dry = 0 ]; then
    for directory in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
        [ -e "$directory/libnvidia-opencl.so.1" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$directory"
    done
    if [ -z "${OCL_ICD_VENDORS:-}" ] && ! grep -qs nvidia /etc/OpenCL/vendors/*.icd; then
        mkdir -p "$out/icd"
        echo "libnvidia-opencl.so.1" > "$out/icd/nvidia.icd"
        export OCL_ICD_VENDORS=$out/icd
    fi
    device=gpu
else
    device=cpu
    # The GPU kernels on PoCL: tiled GEMM (attention's flash path is forced by selftest).
    export SLORAGPU_GEMM_PROFILE=TILED=1
fi
if ! step probe 20 "$bin" devices --json --device "$device" || ! grep -q "\"type\":\"$device\"" "$out/probe.log"; then
    {
        echo "**No OpenCL $device device: stopped after the probe.**"
        echo
        echo '```'
        echo "OCL_ICD_VENDORS=${OCL_ICD_VENDORS:-}  LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        ls -l /etc/OpenCL/vendors 2>&1
        ldd "$bin" 2>&1
        echo '```'
    } >> "$report"
    echo "no OpenCL $device device; report: $report"
    exit 2
fi

if [ $tile_table = 1 ]; then
    # One large tile for every product does not suit both models (docs/BENCHMARKS.md, "First GPU
    # runs"): their step with each GEMM profile forced (a tile as MWG,NWG,KWG,MDIMC,NDIMC,VWM,
    # optionally a wide tile and its threshold), the narrow tiles and attention at their seeds.
    # DEVICE_CHECK_TILES replaces the list (profiles separated by spaces, without TILED=1).
    # On PoCL (--dry-run) two profiles at toy sizes.
    tile() { echo "MWG=$1,NWG=$2,KWG=$3,MDIMC=$4,NDIMC=$5,VWM=$6"; }
    if [ $dry = 0 ]; then
        profiles=("$(tile 32 32 16 8 8 2)" "$(tile 32 64 16 8 8 2)" "$(tile 64 32 16 8 8 2)" "$(tile 64 64 16 16 16 4)"
                  "$(tile 64 64 16 8 16 4)" "$(tile 64 64 32 8 8 4)" "$(tile 128 64 16 16 16 4)" "$(tile 64 128 16 16 16 4)"
                  "$(tile 128 128 16 16 16 4)")
        models=("vit-s 14 112 32" "vit-b 16 224 32")
        short=()
    else
        profiles=("$(tile 32 32 16 8 8 2)" "$(tile 32 32 16 8 8 2),WIDE=32x64x16x8x8x2,WGPU=1")
        models=("vit-ti 16 32 4")
        short=(--steps 1 --warmup 1)
    fi
    [ -z "${DEVICE_CHECK_TILES:-}" ] || read -r -a profiles <<< "$DEVICE_CHECK_TILES"
    for profile in "${profiles[@]}"; do
        for model in "${models[@]}"; do
            read -r name patch size batch <<< "$model"
            step "tile-$(echo "$profile" | tr ',=' '_-')-$name" 60 env SLORAGPU_GEMM_PROFILE="TILED=1,$profile" \
                "$bin" bench train --device "$device" --model "$name" --patch "$patch" --image-size "$size" --batch "$batch" \
                ${short[@]+"${short[@]}"} --json
        done
    done
    {
        echo "## Tile table (images/s)"
        echo
        for log in "$out"/tile-*.log; do
            printf '%s\t%s\n' "$(basename "$log" .log)" "$(grep -o '"images_per_second":[0-9.]*' "$log" | cut -d: -f2)"
        done
    } | tee -a "$report"
    echo "report: $report"
    exit $failed
fi

if [ $dry = 0 ]; then
    step selftest 60 "$bin" selftest --device gpu
    step tune 160 "$bin" tune --device gpu --budget 110 --export "$out/tuning.json"
    step bench-gemm 45 "$bin" bench gemm --device gpu --json
    # The arithmetic peak: what profile-vit-b's roofline divides the step's FLOPs by.
    step peak 30 "$bin" bench peak --device gpu
    cp "$out/bench-gemm.log" "$out/gemm.jsonl" 2> /dev/null || :
    step bench-attention 45 "$bin" bench attention --device gpu
    step bench-train-vit-s 45 "$bin" bench train --device gpu --model vit-s --patch 14 --image-size 112 --batch 32 --json
    step bench-train-vit-b 60 "$bin" bench train --device gpu --model vit-b --patch 16 --image-size 224 --batch 32 --json
    # Where the ViT-B step's device time goes, kernel by kernel (the first GPU runs' best clue).
    step profile-vit-b 45 "$bin" bench train --device gpu --model vit-b --patch 16 --image-size 224 --batch 32 --profile
    # The GEMM operands packed through __local blocks (LP=1, the default) against the CPU's
    # row-per-work-item packing (LP=0), same tiles (the committed H200 large tile), same run.
    for packing in 0 1; do
        step "packing-lp$packing-vit-b" 45 env SLORAGPU_GEMM_PROFILE="TILED=1,MWG=32,NWG=32,KWG=16,MDIMC=8,NDIMC=8,VWM=2,LP=$packing" \
            "$bin" bench train --device gpu --model vit-b --patch 16 --image-size 224 --batch 32 --json
    done
    # Split-k for products whose grid leaves multiprocessors idle (the adapter's narrow ones), off
    # (the default) and on, with the committed large and wide tiles written out (narrow ones at their seeds).
    H200_TILES="TILED=1,MWG=32,NWG=32,KWG=16,MDIMC=8,NDIMC=8,VWM=2,WIDE=32x64x16x8x8x2,WGPU=16"
    for split in 0 1; do
        step "splitk$split-vit-b" 45 env SLORAGPU_GEMM_PROFILE="$H200_TILES,SPLITK=$split" \
            "$bin" bench train --device gpu --model vit-b --patch 16 --image-size 224 --batch 32 --json
    done
    step profile-splitk-vit-b 45 env SLORAGPU_GEMM_PROFILE="$H200_TILES,SPLITK=1" \
        "$bin" bench train --device gpu --model vit-b --patch 16 --image-size 224 --batch 32 --profile
    # Attention's key gradients from one kernel (split 0, the default) or two (1), same run.
    for split in 0 1; do
        for model in "vit-s 14 112" "vit-b 16 224"; do
            read -r name patch size <<< "$model"
            step "flash-split$split-$name" 45 env SLORAGPU_FLASH_SPLIT=$split \
                "$bin" bench train --device gpu --model "$name" --patch "$patch" --image-size "$size" --batch 32 --json
        done
    done
    torch_arguments=(--device cuda)
else
    step selftest 300 "$bin" selftest --device cpu --gpu-kernels
    step tune 120 "$bin" tune --device cpu --small --budget 10 --max-candidates 1 --export "$out/tuning.json"
    step bench-gemm 120 "$bin" bench gemm --device cpu --json --filter "square 512" --min-seconds 0
    step peak 60 "$bin" bench peak --device cpu --min-seconds 0
    cp "$out/bench-gemm.log" "$out/gemm.jsonl" 2> /dev/null || :
    step bench-train-vit-ti 120 "$bin" bench train --device cpu --model vit-ti --patch 16 --image-size 32 --batch 4 --steps 1 --warmup 1 --json
    step profile-vit-ti 120 "$bin" bench train --device cpu --model vit-ti --patch 16 --image-size 32 --batch 4 --steps 1 --warmup 1 --profile
    torch_arguments=(--device cpu --quick)
fi

# PyTorch on the same device, in the same run (skipped where torch is not installed).
if python3 -c "import torch" > /dev/null 2>&1; then
    step torch 100 python3 "$root/scripts/bench_torch_gpu.py" --gemm-json "$out/gemm.jsonl" --out "$out/torch.json" "${torch_arguments[@]}"
else
    echo "## torch (skipped: python3 cannot import torch)" >> "$report"
    printf 'torch\tskipped\t0\n' >> "$summary"
fi

{
    echo "## Summary"
    echo
    echo "| step | exit | seconds |"
    echo "|---|---|---|"
    awk -F '\t' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$summary"
} >> "$report"
echo "report: $report"
exit $failed
