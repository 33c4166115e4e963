"""The aligned raster carries the moving raster's metadata that stays true, on every
writer: GDAL's warper, dmreg's own resampler, the unresampled copy and the COG copy.

Per band: scale and offset, unit, description, colour interpretation, colour table,
nodata and band tags, but not the band statistics. AREA_OR_POINT follows the grid: the
moving raster's Point stays on its own grid and becomes the GeoTIFF default (Area) on
the reference grid. Class rasters (paletted, or tagged thematic) are resampled by
nearest neighbour unless the caller chose otherwise.

The moving rasters are Landsat 7 bands whose geotransform is shifted, so the true
mapping is the identity in pixels and every output pixel has a known source pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Resampling

import dmreg.output
from dmreg.io.band_metadata import is_categorical, output_resampling
from dmreg.output import corrected_georeferencing, write_aligned
from dmreg.pipeline import OutputOptions, RegisterOptions, register
from dmreg.result import RegistrationResult

from helpers import L7, L7_BANDS, MULTI_BANDS, SHIFT, write_raster

NODATA = 0
SCALES = (0.002, 0.0025, 0.5)
OFFSETS = (-0.1, 0.0, 273.15)
UNITS = ("reflectance", "reflectance", "K")
DESCRIPTIONS = ("SWIR2", "NIR", "SWIR1")
COLORINTERP = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)  # a false-colour composite
DATASET_TAGS = {"TIFFTAG_DATETIME": "2000:03:09 12:00:00", "SENSOR": "ETM+"}
BAND_TAGS = {"WAVELENGTH_UM": "2.22"}
STALE_BAND_TAGS = {"STATISTICS_MEAN": "57.3"}

CLASS_CODES = (40, 80, 120, 160, 200, 240)
CLASS_SHIFT = (3.25, -2.75)   # pixels; on the moving grid each output centre lies 1/4 px from a source centre
COLORMAP = {code: (code, 255 - code, 128, 255) for code in CLASS_CODES}

ROUTES = {
    # name: (model, write_aligned arguments, writer used, AREA_OR_POINT of the output)
    "warper-reference": ("translation", {}, "write_warped", "Area"),
    "warper-moving": ("translation", {"grid": "moving"}, "write_warped", "Point"),
    "hand-reference": ("homography", {}, "write_resampled", "Area"),
    "hand-moving": ("homography", {"grid": "moving"}, "write_resampled", "Point"),
    "copy-transform": ("translation", {"resample": False}, "write_copy", "Point"),
    "copy-gcps": ("homography", {"resample": False}, "write_copy", "Area"),
    "cog-warper": ("translation", {"driver": "COG"}, "write_warped", "Area"),
    "cog-hand-moving": ("homography", {"driver": "COG", "grid": "moving"}, "write_resampled", "Point"),
}
CLASS_ROUTES = {
    # name: (masked moving raster, write_aligned arguments, writer used); the model is a translation
    "warper-reference": (False, {}, "write_warped"),
    "warper-moving": (False, {"grid": "moving"}, "write_warped"),
    "hand-reference": (True, {}, "write_resampled"),
    "hand-moving": (True, {"grid": "moving"}, "write_resampled"),
    "copy": (False, {"resample": False}, "write_copy"),
    "cog": (False, {"driver": "COG"}, "write_warped"),
}


@pytest.fixture(scope="module")
def scene() -> dict:
    with rasterio.open(L7) as ds:
        return {"bands": ds.read(), "crs": ds.crs, "transform": ds.transform}


@pytest.fixture(scope="module")
def classes(scene) -> np.ndarray:
    """The NIR band quantised at its sextiles into six class codes (never the nodata 0)."""
    nir = scene["bands"][L7_BANDS["nir"] - 1]
    edges = np.percentile(nir, np.arange(1, 6) * 100 / 6)
    return np.asarray(CLASS_CODES, np.uint8)[np.digitize(nir, edges)]


@pytest.fixture(scope="module")
def files(scene, classes, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("band_metadata")
    crs, t = scene["crs"], scene["transform"]
    ref = write_raster(folder / "ref.tif", scene["bands"][L7_BANDS["red"] - 1], crs=crs, transform=t)
    with rasterio.open(ref, "r+") as ds:
        ds.update_tags(AREA_OR_POINT="Area")

    described = write_raster(folder / "described.tif", scene["bands"][[L7_BANDS[b] - 1 for b in MULTI_BANDS]],
                             crs=crs, transform=t @ Affine.translation(*SHIFT), nodata=NODATA)
    with rasterio.open(described, "r+") as ds:
        ds.scales, ds.offsets, ds.colorinterp = SCALES, OFFSETS, COLORINTERP
        for i, (unit, description) in enumerate(zip(UNITS, DESCRIPTIONS), start=1):
            ds.set_band_unit(i, unit)
            ds.set_band_description(i, description)
            ds.update_tags(i, **BAND_TAGS, **STALE_BAND_TAGS)
        ds.update_tags(AREA_OR_POINT="Point", **DATASET_TAGS)

    paths = {"ref": ref, "described": described}
    for name, mask, palette in (("classes", False, True), ("classes_masked", True, True), ("thematic", False, False)):
        paths[name] = write_raster(folder / f"{name}.tif", classes, crs=crs,
                                   transform=t @ Affine.translation(*CLASS_SHIFT), nodata=NODATA)
        with rasterio.open(paths[name], "r+") as ds:
            if palette:
                ds.write_colormap(1, COLORMAP)
            else:
                ds.update_tags(1, LAYER_TYPE="thematic")
            if mask:  # an explicit mask: only dmreg's resampler honours it
                ds.write_mask(np.full(classes.shape, 255, np.uint8))
    return paths


@pytest.fixture(scope="module")
def results(files) -> Callable[..., RegistrationResult]:
    """Registrations by (moving raster, model), each made once."""
    cache = {}

    def get(name: str, model: str = "translation") -> RegistrationResult:
        if (name, model) not in cache:
            cache[name, model] = register(str(files["ref"]), str(files[name]), RegisterOptions(model=model),
                                          OutputOptions())
        return cache[name, model]
    return get


def _write(result, path, monkeypatch, **kwargs) -> list[str]:
    """write_aligned, returning which of dmreg's writers it called."""
    called = []
    for name in ("write_warped", "write_resampled", "write_copy"):
        def spy(*args, _real=getattr(dmreg.output, name), _name=name, **kw):
            called.append(_name)
            return _real(*args, **kw)
        monkeypatch.setattr(dmreg.output, name, spy)
    write_aligned(result, path, **kwargs)
    return called


@pytest.mark.parametrize("route", ROUTES)
def test_band_metadata_is_carried(route, files, results, tmp_path, monkeypatch):
    model, kwargs, writer, area_or_point = ROUTES[route]
    result = results("described", model)
    out = tmp_path / "aligned.tif"
    assert _write(result, out, monkeypatch, **kwargs) == [writer]
    with rasterio.open(out) as ds:
        assert ds.scales == pytest.approx(SCALES) and ds.offsets == pytest.approx(OFFSETS)
        assert ds.units == UNITS and ds.descriptions == DESCRIPTIONS
        assert ds.colorinterp == COLORINTERP
        assert ds.nodata == NODATA
        assert all(ds.tags(i) == BAND_TAGS for i in (1, 2, 3)), "band statistics of the input no longer hold"
        assert ds.tags() == {**DATASET_TAGS, "AREA_OR_POINT": area_or_point}
        if kwargs.get("driver") == "COG":
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


@pytest.mark.parametrize("route", ["warper-moving", "hand-moving", "copy-transform", "copy-gcps"])
def test_a_point_tag_does_not_move_the_georeferencing(route, files, results, tmp_path):
    """GDAL stores a PixelIsPoint file's georeferencing half a pixel apart: read back,
    it must still be the grid dmreg wrote."""
    model, kwargs, _, _ = ROUTES[route]
    result = results("described", model)
    out = tmp_path / "aligned.tif"
    write_aligned(result, out, **kwargs)
    with rasterio.open(out) as ds, rasterio.open(files["described"]) as mov:
        if kwargs.get("grid") == "moving":
            assert ds.transform.almost_equals(mov.transform, precision=1e-9)
            return
        transform, gcps = corrected_georeferencing(result)
        if transform is not None:
            assert ds.transform.almost_equals(transform, precision=1e-9)
        else:
            np.testing.assert_allclose([(g.row, g.col, g.x, g.y) for g in ds.gcps[0]],
                                       [(g.row, g.col, g.x, g.y) for g in gcps], rtol=0, atol=1e-6)


def _expected_classes(classes: np.ndarray, kwargs: dict, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """The class codes the output must show (the true mapping is the identity in pixels),
    and where that is known: output pixels whose source is ``margin`` px inside the raster."""
    # on the reference grid output pixel q shows source pixel q; on the moving grid its
    # centre q + 1/2 shows source position q + 1/2 + CLASS_SHIFT
    dx, dy = np.floor(np.add(CLASS_SHIFT, 0.5)).astype(int) if kwargs.get("grid") == "moving" else (0, 0)
    h, w = classes.shape
    rows, cols = np.mgrid[0:h, 0:w]
    src_rows, src_cols = rows + dy, cols + dx
    known = (src_rows >= margin) & (src_rows < h - margin) & (src_cols >= margin) & (src_cols < w - margin)
    return classes[np.clip(src_rows, 0, h - 1), np.clip(src_cols, 0, w - 1)], known


@pytest.mark.parametrize("route", CLASS_ROUTES)
def test_a_paletted_raster_keeps_its_classes_and_colour_table(route, classes, files, results, tmp_path, monkeypatch):
    masked, kwargs, writer = CLASS_ROUTES[route]
    result = results("classes_masked" if masked else "classes")
    out = tmp_path / "aligned.tif"
    assert _write(result, out, monkeypatch, **kwargs) == [writer]
    with rasterio.open(out) as ds:
        values = ds.read(1)
        assert ds.colorinterp == (ColorInterp.palette,)
        assert all(ds.colormap(1)[code] == COLORMAP[code] for code in CLASS_CODES)
    assert set(np.unique(values)) <= {NODATA, *CLASS_CODES}, "nearest neighbour invents no class"
    expected, known = _expected_classes(classes, kwargs, margin=4)
    np.testing.assert_array_equal(values[known], expected[known])


def test_an_explicit_resampling_is_honoured_for_a_paletted_raster(results, tmp_path):
    out = tmp_path / "aligned.tif"
    write_aligned(results("classes"), out, grid="moving", resampling=Resampling.bilinear)
    with rasterio.open(out) as ds:
        values, valid = ds.read(1), ds.read_masks(1) > 0
        assert ds.colormap(1)[CLASS_CODES[0]] == COLORMAP[CLASS_CODES[0]]
    blended = ~np.isin(values, CLASS_CODES) & valid
    # each output centre is 1/4 px from a source centre in x and y: every pixel on a class edge blends
    assert blended.mean() > 0.2


def test_the_library_default_is_nearest_for_classes_and_bilinear_otherwise(files, classes, tmp_path):
    out = tmp_path / "aligned.tif"
    register(str(files["ref"]), str(files["classes"]), RegisterOptions(model="translation"),
             OutputOptions(raster=str(out), grid="moving"))
    with rasterio.open(out) as ds:
        values = ds.read(1)
    expected, known = _expected_classes(classes, {"grid": "moving"}, margin=4)
    np.testing.assert_array_equal(values[known], expected[known])
    with rasterio.open(files["described"]) as plain, rasterio.open(files["thematic"]) as thematic:
        assert not is_categorical(plain) and is_categorical(thematic)
        assert output_resampling(plain, None) == Resampling.bilinear
        assert output_resampling(thematic, None) == Resampling.nearest
        assert output_resampling(thematic, Resampling.cubic) == Resampling.cubic


def test_a_thematic_cog_has_class_codes_in_every_overview(results, tmp_path):
    out = tmp_path / "aligned.tif"
    write_aligned(results("thematic"), out, driver="COG", creation_options={"BLOCKSIZE": "128"})
    with rasterio.open(out) as ds:
        assert ds.tags(1)["LAYER_TYPE"] == "thematic"
        levels = len(ds.overviews(1))
        assert levels >= 1, "a 349 px raster in 128 px tiles gets overviews"
        assert set(np.unique(ds.read(1))) <= {NODATA, *CLASS_CODES}
    for level in range(levels):
        with rasterio.open(out, overview_level=level) as ds:
            assert set(np.unique(ds.read(1))) <= {NODATA, *CLASS_CODES}, f"overview {level} invents classes"
