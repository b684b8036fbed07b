#!/usr/bin/env bash
# One-time set-up of a fresh Debian machine: system packages, a release build, and a first
# look at the OpenCL devices (which also shows the device sloragpu will use).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-system-packages.sh
swift build -c release --product sloragpu
.build/release/sloragpu devices
# Compile every kernel once so later runs start warm.
.build/release/sloragpu kernels
