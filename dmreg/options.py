"""What steers one registration (RegisterOptions) and what it writes (OutputOptions).

Both validate themselves on construction, so library callers get the same errors as
the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rasterio.enums import Resampling

from dmreg.errors import UsageError
from dmreg.estimate.models import KINDS
from dmreg.io.driver_options import check_creation_options
from dmreg.io.raster import is_gdal_path
from dmreg.io.sampling import SUPPORTED_RESAMPLING
from dmreg.io.sar import SAR_SCALES
from dmreg.io.vector import vector_driver
from dmreg.matchers.base import MODALITIES
from dmreg.output import FORMATS, GRIDS

MODEL_CHOICES = ("auto", *KINDS, "local")
"""``--model``: auto (chosen by cross-validation), a global kind, or local (a smooth field
on top of the best global kind)."""


@dataclass(frozen=True)
class RegisterOptions:
    """Everything that steers one registration; the defaults suit 10-100 m imagery."""

    ref_band: int = 1
    mov_band: int = 1
    matcher: str = "structural"
    weights: str | None = None        # learned matchers: a shipped name or a path
    device: str = "auto"              # learned matchers: auto, cpu, cuda, cuda:N
    model: str = "auto"               # auto, local or one of estimate.models.KINDS
    tile_size: int = 512              # tile side in working pixels
    tile_overlap: int = 32
    max_tiles: int = 100
    target_error_px: float = 0.05     # a pass stops matching tiles once the predicted CE90 is this small
                                      # (working px); 0 matches every planned tile
    coarse_size: int = 1024           # longest side of the coarse level in pixels
    max_offset_px: float | None = None  # largest georeferencing error expected (reference px)
    ransac_threshold_px: float = 1.5  # inlier threshold in working pixels
    min_inliers: int = 12
    min_valid_fraction: float = 0.5   # tiles with less valid (non-nodata) area are skipped
    min_texture: float = 0.01         # tiles with less mean gradient are skipped
    batch_size: int = 8
    refinements: int = 1              # extra fine passes through the fitted model: sub-pixel
                                      # peak estimates are unbiased only near zero offset
    ref_modality: str | None = None
    mov_modality: str | None = None
    rpc_height: float | None = None   # RPC-georeferenced rasters: constant height (m above the ellipsoid), else 0
    dem: str | None = None            # RPC-georeferenced rasters: a DEM (any GDAL raster) giving the heights
    gcp_tps: bool = False             # GCP-georeferenced rasters: thin-plate spline instead of a polynomial
    sar_scale: str = SAR_SCALES[0]    # the scale SAR rasters (complex, or hinted sar) are matched in
    max_error_px: float | None = None  # predicted CE90 above this: flagged (FlaggedError), nothing written
    rotation_search: bool | None = None  # None: on for pixel-space pairs, off for georeferenced ones
    flip: bool = False                # rotation search also tries the mirrored image
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_CHOICES:
            raise UsageError(f"unknown model {self.model!r}; choose one of: {', '.join(MODEL_CHOICES)}")
        if self.tile_size < 64:
            raise UsageError("--tile-size must be at least 64 pixels")
        if not 0 <= self.tile_overlap < self.tile_size:
            raise UsageError("--tile-overlap must be between 0 and the tile size")
        if self.max_tiles < 1:
            raise UsageError("--max-tiles must be at least 1")
        if self.ransac_threshold_px <= 0:
            raise UsageError("--ransac-threshold must be positive")
        if not self.target_error_px >= 0:
            raise UsageError("--target-error must be zero or positive")
        if self.max_error_px is not None and not self.max_error_px > 0:
            raise UsageError("--max-error must be positive")
        for flag, value in (("--ref-modality", self.ref_modality), ("--mov-modality", self.mov_modality)):
            if value is not None and value not in MODALITIES:
                raise UsageError(f"{flag} {value!r}: choose one of {', '.join(MODALITIES)}")
        if self.sar_scale not in SAR_SCALES:
            raise UsageError(f"--sar-scale {self.sar_scale!r}: choose one of {', '.join(SAR_SCALES)}")
        if self.dem is not None and self.rpc_height is not None:
            raise UsageError("give --dem or --rpc-height, not both: the DEM gives the heights")
        if self.dem is not None and not is_gdal_path(self.dem) and not Path(self.dem).is_file():
            raise UsageError(f"--dem {self.dem}: no such file")
        if self.flip and self.rotation_search is False:
            raise UsageError("--flip is part of the rotation search: it cannot be combined with --no-rotation-search")


@dataclass(frozen=True)
class OutputOptions:
    """Where and how to write; None paths are not written."""

    raster: str | None = None
    report: str | None = None
    tiepoints: str | None = None
    grid: str = "reference"
    driver: str = "COG"               # COG (cloud-optimised, with overviews) or GTiff (one pass, faster)
    resample: bool = True
    resampling: Resampling | None = None  # None: nearest for class codes (paletted, thematic), else bilinear
    nodata: float | None = None
    creation_options: dict[str, str] = field(default_factory=dict)
    overwrite: bool = False
    report_extra: dict = field(default_factory=dict)  # top-level report fields (dmreg batch: its batch_key)

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise UsageError(f"unknown grid {self.grid!r}; choose one of: {', '.join(GRIDS)}")
        if self.driver not in FORMATS:
            raise UsageError(f"unknown output format {self.driver!r}; choose one of: {', '.join(FORMATS)}")
        if self.resampling is not None and self.resampling not in SUPPORTED_RESAMPLING:
            names = ", ".join(r.name for r in SUPPORTED_RESAMPLING)
            raise UsageError(f"resampling {self.resampling.name} is not supported; choose one of: {names}")
        if self.tiepoints:
            vector_driver(self.tiepoints)
        if self.raster and self.creation_options:
            check_creation_options(self.driver, self.creation_options)
        paths = [p for p in (self.raster, self.report, self.tiepoints) if p]
        if len({str(Path(p).resolve()) for p in paths}) < len(paths):
            raise UsageError("the raster, report and tie-point outputs must be different files")
