#!/usr/bin/env bash
# Fetches an RGB dataset from PyPI once: the simulated textile images of conformal-clip-data
# 0.1.4 (2,000 JPEGs, 3 classes: nominal 1,000, global defect 500, local defect 500) and lays
# them out for `--data folder:data/textile` with a fixed split: of each class's images in name
# order, every fifth (the 5th, 10th, ...) is a test image, the rest train (1,600 / 400).
# Uses the private virtual environment of fetch_weights.sh (.venv-weights) for pip.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-data/textile}
if [ -d "$out/train" ] && [ -d "$out/test" ]; then
    echo "textile images already in $out"
    exit 0
fi
[ -x .venv-weights/bin/pip ] || python3 -m venv .venv-weights
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
.venv-weights/bin/pip download --quiet --disable-pip-version-check --no-deps conformal-clip-data==0.1.4 -d "$download"
python3 - "$download"/conformal_clip_data-0.1.4-py3-none-any.whl "$out" <<'PY'
import os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "conformal_clip_data/data/textile_images/simulated/"
staging = out + ".tmp"
with zipfile.ZipFile(wheel) as archive:
    names = sorted(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".jpg"))
    by_class = {}
    for name in names:
        by_class.setdefault(name[len(prefix):].split("/")[0], []).append(name)
    for label, members in sorted(by_class.items()):
        for index, name in enumerate(members):
            part = "test" if index % 5 == 4 else "train"
            os.makedirs(os.path.join(staging, part, label), exist_ok=True)
            with open(os.path.join(staging, part, label, os.path.basename(name)), "wb") as file:
                file.write(archive.read(name))
        print(f"{label}: {len(members)} images")
os.rename(staging, out)
PY
echo "textile images in $out (train/ and test/, a folder per class)"
