#!/usr/bin/env bash
# Here (with the package index or pip's cache): gather what a GPU device machine lacks to
# run the DistillMatch benchmarks, under .device/ (git-ignored), so that one `run` call
# can carry it. The device has Python, torch, timm, numpy and OpenCV but no rasterio and
# no network. Prints the carry list for the device tool; see benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
wheels=.device/wheels
mkdir -p "$wheels"
# dmreg's runtime dependencies that the device lacks, at the versions tested here;
# --no-deps: numpy, torch and OpenCV come from the device itself
python3 -m pip download --quiet --no-deps --dest "$wheels" \
    rasterio==1.4.4 affine==3.0.1 attrs==26.1.0 certifi click==8.5.1 click-plugins==1.1.1.2 cligj==0.7.2 \
    pyparsing==3.3.3 shapely==2.2.0 "typer>=0.12,<0.29" shellingham==1.5.4 rich==15.0.0 markdown-it-py==4.3.0 \
    mdurl==0.1.2 Pygments==2.21.0 threadpoolctl==3.8.0 safetensors==0.8.0 annotated-doc==0.0.7
benchmarks/fetch_data.sh >/dev/null  # the Landsat 8 bands bench_large.py upsamples
scene=LC08_L1TP_224078_20200518_20200518_01_RT
size=$(du -cm "$wheels" "benchmarks/data/${scene}_B4.TIF" "benchmarks/data/${scene}_B2.TIF" | tail -1 | cut -f1)
echo "carry (${size} MB of the 64 MB allowed):"
echo "  .device benchmarks/data/${scene}_B4.TIF benchmarks/data/${scene}_B2.TIF"
echo "command: bash benchmarks/device/run.sh"
