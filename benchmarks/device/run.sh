#!/usr/bin/env bash
# On the GPU device machine (one `run` call, files from prepare.sh carried): install dmreg
# into a venv over the device's own torch, then record DistillMatch on CUDA: the large
# pair end to end (seconds per tile, tiles per second, peak GPU memory) and the 800 px
# pair. Everything the benchmarks write goes to $OUT. MATCHER/DEVICE override the
# defaults, so the plumbing can be tried on a CPU machine first.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:?set OUT to the folder results go to}
matcher=${MATCHER:-distillmatch}
device=${DEVICE:-cuda}
venv=${VENV:-/tmp/dmreg-device-venv}
python3 -m venv --system-site-packages "$venv"
. "$venv/bin/activate"
pip install --quiet --no-index --find-links .device/wheels -r benchmarks/device/requirements.txt
pip install --quiet --no-index --no-deps --no-build-isolation -e .
{ nvidia-smi || true; python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    || true; } > "$out/device.txt" 2>&1
status=0
python benchmarks/bench_large.py --tag "$device" --matcher "$matcher" --device "$device" > "$out/bench_large.txt" 2>&1 \
    || status=$?
python benchmarks/bench_speed.py --only dm800 --device "$device" --tag "$device" > "$out/bench_speed.txt" 2>&1 \
    || status=$?
cp -r benchmarks/results/large "$out/large" 2>/dev/null || true
cp benchmarks/results/speed/history.jsonl benchmarks/results/speed/latest.md "$out/" 2>/dev/null || true
find "$out" -name '*.tif' -delete  # the aligned rasters are too large to bring back
tail -n 40 "$out/bench_large.txt" "$out/bench_speed.txt"
exit "$status"
