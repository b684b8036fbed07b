#!/usr/bin/env bash
# Builds what the device check carries to a GPU machine that has no Swift toolchain and no
# package registry: device-bundle/bin/sloragpu (release, Swift runtime linked statically) and
# device-bundle/lib/ with the shared libraries it loads that such a machine may lack (the
# OpenCL ICD loader, libpng, libturbojpeg, zlib). The driver's own OpenCL library stays the
# machine's. device-bundle/ is ignored by git. Built without the MPI trait: the GPU machine has
# no Open MPI, and the check runs one process.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build -c release --static-swift-stdlib --disable-default-traits --product sloragpu --scratch-path .build-static
rm -rf device-bundle
mkdir -p device-bundle/bin device-bundle/lib
# Stripped and gzipped (80 MB -> 23 MB, the static Foundation's ICU data being most of it), so
# the bundle travels well inside a 64 MiB limit; device-check.sh unpacks it.
strip -o device-bundle/bin/sloragpu .build-static/release/sloragpu
for library in libOpenCL.so.1 libpng16.so.16 libturbojpeg.so.0 libz.so.1; do
    path=$(ldd device-bundle/bin/sloragpu | awk -v name="$library" '$1 == name { print $3 }')
    [ -n "$path" ] || { echo "sloragpu does not load $library (ldd):" >&2; ldd device-bundle/bin/sloragpu >&2; exit 1; }
    cp -L "$path" device-bundle/lib/
done
# Anything else it loads must be in every glibc system (libc, libm, libstdc++, libgcc_s, ...).
ldd device-bundle/bin/sloragpu
gzip -9 device-bundle/bin/sloragpu
du -sh device-bundle
