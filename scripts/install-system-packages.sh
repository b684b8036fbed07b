#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages sloragpu needs to build and run on any machine:
# the OpenCL headers and ICD loader, and PoCL (the CPU OpenCL driver; without
# pocl-opencl-icd no platform is registered and no device is found).
set -euo pipefail

packages=(ocl-icd-opencl-dev opencl-headers pocl-opencl-icd libpocl-dev)

if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
