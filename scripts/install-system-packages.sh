#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages sloragpu needs to build and run on any machine: the
# OpenCL headers and ICD loader, and PoCL (the CPU OpenCL driver; without pocl-opencl-icd no
# platform is registered and no device is found), the codecs the data readers use (zlib,
# libpng, libjpeg-turbo), and Open MPI (the default build links it for data-parallel training
# under mpirun; a plain run never starts it). `--with-data` adds what the default job uses: the Fashion-MNIST
# dataset and Python's venv (for converting the default weights once).
set -euo pipefail

packages=(ocl-icd-opencl-dev opencl-headers pocl-opencl-icd libpocl-dev zlib1g-dev libpng-dev libturbojpeg0-dev libopenmpi-dev openmpi-bin)
if [ "${1:-}" = "--with-data" ]; then
    packages+=(dataset-fashion-mnist python3 python3-venv)
fi

if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update
"${sudo[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
