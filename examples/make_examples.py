"""Make the misregistered example raster from the shipped Landsat 7 scene.

The SWIR2 band of L7_ETMs.tif is co-registered with its red band by the data provider;
this script writes it alone with a geotransform shifted by a known offset, giving a
cross-modal pair (red vs short-wave infrared) with ground truth. Deterministic: rerun it
to recreate examples/data/L7_SWIR2_offset.tif byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import rasterio
from affine import Affine

HERE = Path(__file__).parent / "data"
OFFSET_PX = (15.0, -9.5)  # about 430 m east and 270 m north at 28.5 m pixels


def main() -> None:
    with rasterio.open(HERE / "L7_ETMs.tif") as src:
        profile = src.profile | {"count": 1, "transform": src.transform @ Affine.translation(*OFFSET_PX)}
        swir2 = src.read(6)
    with rasterio.open(HERE / "L7_SWIR2_offset.tif", "w", **profile) as dst:
        dst.write(swir2, 1)
        dst.set_band_description(1, "SWIR2 (Landsat 7 ETM+ band 7)")
        dst.update_tags(DMREG_TRUE_OFFSET_PX=f"{OFFSET_PX[0]} {OFFSET_PX[1]}")


if __name__ == "__main__":
    main()
