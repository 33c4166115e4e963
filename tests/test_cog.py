"""`--of COG`: a cloud-optimised GeoTIFF with overviews, the same pixels as the GeoTIFF."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from dmreg.errors import UsageError
from dmreg.options import OutputOptions
from dmreg_cli.main import app

from helpers import Case

runner = CliRunner()


def _register(case: Case, out, *extra: str) -> None:
    result = runner.invoke(app, ["register", str(case.ref), str(case.mov), "-o", str(out), "-q", *extra])
    assert result.exit_code == 0, result.output


def test_cog_has_the_cog_layout_overviews_and_the_geotiff_pixels(shift_nir: Case, tmp_path):
    cog, tif = tmp_path / "aligned_cog.tif", tmp_path / "aligned.tif"
    _register(shift_nir, cog, "--of", "COG", "--co", "BLOCKSIZE=128")
    _register(shift_nir, tif)
    with rasterio.open(cog) as c, rasterio.open(tif) as t:
        assert c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert c.block_shapes[0] == (128, 128)
        assert c.overviews(1), "a 349 px raster in 128 px tiles gets overviews"
        assert c.crs == t.crs and c.transform.almost_equals(t.transform) and c.nodata == t.nodata
        np.testing.assert_array_equal(c.read(), t.read())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned.tif", "aligned_cog.tif"], "no temporary files left"


def test_cog_output_refuses_to_overwrite(shift_nir: Case, tmp_path):
    out = tmp_path / "aligned.tif"
    out.write_bytes(b"precious")
    result = runner.invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(out), "--of", "COG"])
    assert result.exit_code == 6
    assert out.read_bytes() == b"precious"


def test_unknown_format_is_a_usage_error(shift_nir: Case, tmp_path):
    result = runner.invoke(app, ["register", str(shift_nir.ref), str(shift_nir.mov), "-o", str(tmp_path / "a.tif"),
                                 "--of", "PNG"])
    assert result.exit_code == 2
    with pytest.raises(UsageError, match="output format"):
        OutputOptions(driver="JPEG")
