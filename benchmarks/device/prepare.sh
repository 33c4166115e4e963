#!/usr/bin/env bash
# Here (with the package index or pip's cache): gather what a GPU device machine lacks to
# run the DistillMatch benchmarks, under .device/ (git-ignored), so that one `run` call
# can carry it. The device has Python, torch, timm, numpy and OpenCV but no rasterio and
# no network. Prints the carry list for the device tool; see benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
wheels=.device/wheels
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --dest "$wheels" -r benchmarks/device/requirements.txt
benchmarks/fetch_data.sh >/dev/null  # the Landsat 8 bands bench_large.py upsamples
scene=LC08_L1TP_224078_20200518_20200518_01_RT
size=$(du -cm "$wheels" "benchmarks/data/${scene}_B4.TIF" "benchmarks/data/${scene}_B2.TIF" | tail -1 | cut -f1)
echo "carry (${size} MB of the 64 MB allowed):"
echo "  .device benchmarks/data/${scene}_B4.TIF benchmarks/data/${scene}_B2.TIF"
echo "command: bash benchmarks/device/run.sh"
