#!/usr/bin/env bash
# One command on a fresh Debian machine: system packages (OpenCL, PoCL, codecs, the
# Fashion-MNIST dataset), a release build, the default weights (fetched and converted once),
# a look at the OpenCL devices, and then the default job: Serial LoRA fine-tuning of
# DINOv2-S/14 on Fashion-MNIST at 112 px (5.5 to 16 minutes on 2 cores, by CPU), which ends with the
# test accuracy on the full test set and the adapter's path. Extra arguments go to `train`;
# --overwrite lets the script run again over an earlier default run in runs/serial.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-system-packages.sh --with-data
swift build -c release --product sloragpu
scripts/fetch_weights.sh
.build/release/sloragpu devices
.build/release/sloragpu train --overwrite "$@"
