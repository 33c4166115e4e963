"""QA pictures: one PNG per registered pair (the batch contact sheet is in dmreg.batch.sheet).

RMSE and inlier counts say how well the matches agree with the model, not whether the
model is right; a checkerboard before and after correction shows that at a glance. The
predicted error map shows where the mapping is poorly constrained (extrapolated, few
blocks of matches), which no residual can show.
Figures are drawn with matplotlib's Agg canvas directly (never pyplot), so rendering
needs no display and is safe in worker processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.quiver import Quiver

from dmreg.geometry.footprint import overlap_in_reference
from dmreg.geometry.mapping import CHECK_GRID_SIZE, check_points
from dmreg.geometry.tiling import Grid, grid_over
from dmreg.io.raster import gdal_env, open_raster
from dmreg.io.sampling import CoordFn, normalise_contrast, sample_onto_grid
from dmreg.io.writing import atomic_path

if TYPE_CHECKING:
    from dmreg.estimate.uncertainty import Uncertainty
    from dmreg.result import RegistrationResult

PREVIEW_SIZE = 700        # longest side of the preview in pixels (never finer than the reference)
CHECKERS = 8              # checkerboard squares across the longer side
DPI = 100
QA_WIDTH_IN = 21.0        # three panels across, each about as wide as the preview at DPI
QA_COLUMNS = 3
QA_TITLE_IN = 1.8         # the pair and three lines of key numbers
QA_LABELS_IN = 1.0        # panel titles and the legends below the bottom row
INVALID = (0.55, 0.55, 0.55)      # nodata / outside a raster
INLIER_COLOUR = "#33bbff"
OUTLIER_COLOUR = "#ff6a00"
VECTOR_TARGET = 0.025     # the 90th-percentile inlier vector, drawn, as a fraction of the preview's long side
MAX_EXAGGERATION = 1000.0
ERROR_CMAP = "viridis"
MIN_ERROR_SCALE = 0.5     # px; the colour bar's top at least, so a uniformly tiny error does not look alarming
UNKNOWN_COLOURS = ((0.45, 0.45, 0.45), (0.75, 0.75, 0.75))   # hatching where the expected error is unknown
HATCH_PX = 8              # period of that hatching, preview pixels
FIELD_ARROWS = 12         # local-field arrows per side of the moving image
FIELD_TARGET = 0.5 / FIELD_ARROWS   # the largest arrow, drawn: about half the arrows' spacing
FIELD_COLOUR = "#ff2d8a"
ERROR_PANEL = "predicted error"   # the label of that panel's axes



@dataclass(frozen=True)
class QAPreview:
    """The overlap on one reduced grid in reference space, contrast-stretched to [0, 1]:
    the reference, and the moving raster through the raw georeferencing (``before``) and
    through the corrected mapping (``after``), each with its validity mask."""

    grid: Grid
    ref: np.ndarray
    ref_ok: np.ndarray
    before: np.ndarray
    before_ok: np.ndarray
    after: np.ndarray
    after_ok: np.ndarray


def read_preview(result: RegistrationResult, *, ref_band: int = 1, mov_band: int = 1,
                 max_size: int = PREVIEW_SIZE) -> QAPreview:
    """Sample both rasters over the union of the overlaps before and after correction, so
    neither picture is cut short; bounded window reads, so memory depends on ``max_size`` only."""
    sizes = (result.mov.width, result.mov.height), (result.ref.width, result.ref.height)
    area = overlap_in_reference(result.georef, *sizes).union(overlap_in_reference(result.mapping, *sizes))
    grid = grid_over(area, max_size)
    with gdal_env(), open_raster(result.ref.path, ref_band) as ref_ds, \
            open_raster(result.mov.path, mov_band) as mov_ds:
        ref, ref_ok = _sample(ref_ds, ref_band, grid, lambda x, y: (x, y))
        before, before_ok = _sample(mov_ds, mov_band, grid, result.georef.inverse)
        after, after_ok = _sample(mov_ds, mov_band, grid, result.mapping.inverse)
    return QAPreview(grid, ref, ref_ok, before, before_ok, after, after_ok)


def write_qa_picture(result: RegistrationResult, path: str | Path, *, ref_band: int = 1, mov_band: int = 1,
                     title: str | None = None, overwrite: bool = False) -> None:
    """Write the QA PNG of one registration (see :func:`qa_figure`)."""
    with atomic_path(path, overwrite) as tmp:
        preview = read_preview(result, ref_band=ref_band, mov_band=mov_band)
        fig = qa_figure(result, preview, title=title, ref_band=ref_band, mov_band=mov_band)
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")


def qa_figure(result: RegistrationResult, preview: QAPreview, *, title: str | None = None, ref_band: int = 1,
              mov_band: int = 1) -> Figure:
    """The QA picture on an Agg canvas: checkerboards before and after correction and a
    red/cyan edge blend after it on top; tie points with exaggerated residual vectors and
    the predicted error map below. Separate from writing so its panels can be inspected."""
    rows, cols = preview.ref.shape
    panel_height = (QA_WIDTH_IN / QA_COLUMNS - 0.3) * min(max(rows / cols, 0.3), 1.6)
    fig = Figure(figsize=(QA_WIDTH_IN, QA_TITLE_IN + 2 * panel_height + QA_LABELS_IN), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    cells = fig.add_gridspec(2, 2 * QA_COLUMNS)   # half-panel columns: the bottom row of two is centred
    a, b, c = (fig.add_subplot(cells[0, 2 * i:2 * i + 2]) for i in range(QA_COLUMNS))
    d, e = (fig.add_subplot(cells[1, 2 * i + 1:2 * i + 3]) for i in range(QA_COLUMNS - 1))
    checker = _checker_mask(preview.ref.shape)
    _show(a, _checkerboard(preview.ref, preview.ref_ok, preview.before, preview.before_ok, checker))
    a.set_title("(a) before: checkerboard,\nreference / moving as georeferenced")
    _show(b, _checkerboard(preview.ref, preview.ref_ok, preview.after, preview.after_ok, checker))
    b.set_title("(b) after: checkerboard,\nreference / moving corrected")
    _show(c, _edge_blend(preview.ref, preview.ref_ok, preview.after, preview.after_ok))
    c.set_title("(c) after: edges, red = reference,\ncyan = moving, white where both")
    _tie_points(d, result, preview)
    _predicted_error(e, result, preview)
    fig.suptitle(_qa_title(result, title, ref_band, mov_band), fontsize=14, linespacing=1.5)
    return fig


def correction_at_centre(result: RegistrationResult) -> tuple[float, float]:
    """(dx, dy) in reference pixels that the correction moves the moving image's centre."""
    gx, gy = result.georef.apply(np.array([result.mov.width / 2]), np.array([result.mov.height / 2]))
    cx, cy = result.correction.apply(gx, gy)
    return float(cx[0] - gx[0]), float(cy[0] - gy[0])


# --- the QA picture -------------------------------------------------------------------

def _sample(ds, band: int, grid: Grid, to_source: CoordFn) -> tuple[np.ndarray, np.ndarray]:
    values, ok = sample_onto_grid(ds, [band], lambda u, v: to_source(*grid.to_ref(u, v)), grid.shape)
    return normalise_contrast(values[0], ok), ok


def _checker_mask(shape: tuple[int, int]) -> np.ndarray:
    """True on the reference squares, about CHECKERS squares across the longer side."""
    side = max(1, math.ceil(max(shape) / CHECKERS))
    rows, cols = np.indices(shape)
    return (rows // side + cols // side) % 2 == 0


def _checkerboard(ref: np.ndarray, ref_ok: np.ndarray, mov: np.ndarray, mov_ok: np.ndarray,
                  checker: np.ndarray) -> np.ndarray:
    grey = np.where(checker, ref, mov)
    return _rgb(grey, grey, grey, np.where(checker, ref_ok, mov_ok))


def _edge_blend(ref: np.ndarray, ref_ok: np.ndarray, mov: np.ndarray, mov_ok: np.ndarray) -> np.ndarray:
    """Reference edges in red, moving edges in cyan: aligned edges add up to white. Edges,
    not intensities, because the two modalities differ in brightness but share structure."""
    ok = cv2.erode((ref_ok & mov_ok).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    red, cyan = _edges(ref, ok), _edges(mov, ok)
    return _rgb(red, cyan, cyan, ok)


def _edges(img: np.ndarray, ok: np.ndarray) -> np.ndarray:
    energy = np.hypot(cv2.Sobel(img, cv2.CV_32F, 1, 0), cv2.Sobel(img, cv2.CV_32F, 0, 1))
    top = float(np.percentile(energy[ok], 98)) if ok.any() else 0.0
    return np.clip(energy / top, 0.0, 1.0) if top > 0 else np.zeros_like(energy)


def _rgb(r: np.ndarray, g: np.ndarray, b: np.ndarray, ok: np.ndarray) -> np.ndarray:
    img = np.stack([r, g, b], axis=-1)
    img[~ok] = INVALID
    return img


def _show(ax: Axes, img: np.ndarray) -> None:
    """Draw a preview with grid pixel corners as data coordinates, so (u, v) overlays line up."""
    rows, cols = img.shape[:2]
    ax.imshow(img, extent=(0, cols, rows, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _dimmed_reference(preview: QAPreview) -> np.ndarray:
    """The reference, darkened and low in contrast, so overlays on it stand out."""
    dim = 0.15 + 0.7 * preview.ref
    return _rgb(dim, dim, dim, preview.ref_ok)


def _tie_points(ax: Axes, result: RegistrationResult, preview: QAPreview) -> None:
    """Matches at their reference position, with vectors to where the fitted model puts them."""
    grid = preview.grid
    _show(ax, _dimmed_reference(preview))
    m = result.matches
    fx, fy = result.correction.apply(m.pred_px[:, 0], m.pred_px[:, 1])
    u = (m.ref_px[:, 0] - grid.x0) / grid.scale
    v = (m.ref_px[:, 1] - grid.y0) / grid.scale
    du = (fx - m.ref_px[:, 0]) / grid.scale
    dv = (fy - m.ref_px[:, 1]) / grid.scale
    inlier = result.selected.inliers
    factor = _exaggeration(np.hypot(du, dv)[inlier], max(preview.ref.shape))
    for mask, colour, label in ((~inlier, OUTLIER_COLOUR, "outliers"), (inlier, INLIER_COLOUR, "inliers")):
        ax.scatter(u[mask], v[mask], s=12, color=colour, linewidths=0, label=f"{label} ({int(mask.sum())})")
        ax.quiver(u[mask], v[mask], du[mask] * factor, dv[mask] * factor, color=colour, angles="xy",
                  scale_units="xy", scale=1, width=0.003, headwidth=3, headlength=4, headaxislength=3.5)
    ax.set_xlim(0, preview.ref.shape[1])
    ax.set_ylim(preview.ref.shape[0], 0)
    ax.set_title(f"(d) tie points on the reference,\nresidual vectors x{factor:g}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, frameon=False, fontsize=11,
              markerscale=2.5)


def _predicted_error(ax: Axes, result: RegistrationResult, preview: QAPreview) -> None:
    """The expected error of the mapping over the preview, with the local field's arrows
    when the model has one: a low RMSE far from any match is no proof of accuracy."""
    ax.set_label(ERROR_PANEL)
    unc = result.uncertainty
    ax.set_title(f"(e) expected error of the mapping,\n{_predicted_text(unc)}")
    background = _dimmed_reference(preview)
    if unc is None:
        _show(ax, background)
        ax.text(0.5, 0.5, "no uncertainty estimate", transform=ax.transAxes, ha="center", va="center",
                fontsize=14, color="white", bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"})
        return
    error = _error_on_preview(result, preview.grid, unc.error_px)
    finite = unc.error_px[np.isfinite(unc.error_px)]
    norm = Normalize(0.0, max(float(finite.max()), MIN_ERROR_SCALE)) if len(finite) else Normalize(0.0, 1.0)
    _show(ax, _error_image(error, background, norm))
    if len(finite):
        ax.figure.colorbar(ScalarMappable(norm, ERROR_CMAP), ax=ax, shrink=0.85,
                           label="expected error (reference px)")
    handles = [Patch(facecolor=UNKNOWN_COLOURS[1], edgecolor=UNKNOWN_COLOURS[0], hatch="//",
                     label="unknown")] if np.isinf(error).any() else []
    if result.selected.kind == "local":
        handles.append(_local_field(ax, result, preview))
    ax.set_xlim(0, preview.ref.shape[1])
    ax.set_ylim(preview.ref.shape[0], 0)
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2, frameon=False,
                  fontsize=11)


def _predicted_text(unc: Uncertainty | None) -> str:
    if unc is None:
        return "no uncertainty estimate"
    return f"predicted CE90 {unc.ce90_px:.2f} px" if math.isfinite(unc.ce90_px) else "predicted error unknown"


def _error_on_preview(result: RegistrationResult, grid: Grid, error_px: np.ndarray) -> np.ndarray:
    """The check grid's expected errors at each preview pixel, bilinear between the grid's
    points (clamped at the moving image's border): NaN outside the moving image, inf where
    unknown points outweigh known ones. Through the inverse of the corrected mapping, so
    the map sits where the moving image lands whatever the model or CRS."""
    u, v = np.meshgrid(np.arange(grid.width) + 0.5, np.arange(grid.height) + 0.5)
    x, y = result.mapping.inverse(*grid.to_ref(u, v))
    w, h = result.mov.width, result.mov.height
    inside = (x >= 0) & (x <= w) & (y >= 0) & (y <= h)
    n = CHECK_GRID_SIZE
    col = np.where(inside, (x - 0.5) * (n - 1) / max(w - 1, 1), 0.0).astype(np.float32)
    row = np.where(inside, (y - 0.5) * (n - 1) / max(h - 1, 1), 0.0).astype(np.float32)
    values = error_px.reshape(n, n)
    known = np.isfinite(values)

    def sample(a: np.ndarray) -> np.ndarray:
        return cv2.remap(a.astype(np.float32), col, row, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    weight = sample(known)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = sample(np.where(known, values, 0.0)) / weight
    return np.where(inside, np.where(weight >= 0.5, error, np.inf), np.nan)


def _error_image(error: np.ndarray, background: np.ndarray, norm: Normalize) -> np.ndarray:
    """Colour-mapped errors, grey hatching where unknown, the background outside the moving image."""
    img = background.copy()
    known = np.isfinite(error)
    img[known] = colormaps[ERROR_CMAP](norm(error[known]))[:, :3]
    rows, cols = np.indices(error.shape)
    stripe = ((rows + cols) // (HATCH_PX // 2)) % 2
    unknown = np.isinf(error)
    img[unknown] = np.asarray(UNKNOWN_COLOURS)[stripe[unknown]]
    return img


def _local_field(ax: Axes, result: RegistrationResult, preview: QAPreview) -> Quiver:
    """Arrows of the local part of the correction on a sparse grid over the moving image,
    from where the global base puts a point to where the field moves it, exaggerated so
    the largest spans about half the arrows' spacing. Returns the arrows, for the legend."""
    model, grid = result.selected.transform, preview.grid
    sx, sy = result.georef.apply(*check_points(result.mov.width, result.mov.height, FIELD_ARROWS))
    fx, fy = model.field_at(sx, sy)
    bx, by = model.base.apply(sx, sy)
    largest = float(np.hypot(fx, fy).max())
    factor = _exaggeration(np.array([largest / grid.scale]), max(preview.ref.shape), FIELD_TARGET)
    return ax.quiver((bx - grid.x0) / grid.scale, (by - grid.y0) / grid.scale, fx / grid.scale * factor,
                     fy / grid.scale * factor, color=FIELD_COLOUR, angles="xy", scale_units="xy", scale=1,
                     width=0.004, headwidth=3, headlength=4, headaxislength=3.5,
                     label=f"local correction x{factor:g} (largest {largest:.2f} px)")


def _exaggeration(lengths: np.ndarray, long_side: int, target: float = VECTOR_TARGET) -> float:
    """A round factor (1, 2 or 5 times a power of ten) that draws the 90th-percentile
    length at about ``target`` of the long side: typical vectors become visible."""
    typical = float(np.percentile(lengths, 90)) if len(lengths) else 0.0
    if typical <= 0:
        return 1.0
    wanted = min(target * long_side / typical, MAX_EXAGGERATION)
    if wanted <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(wanted))
    return max(step * power for step in (1, 2, 5) if step * power <= wanted)


def _qa_title(result: RegistrationResult, title: str | None, ref_band: int, mov_band: int) -> str:
    sel = result.selected
    dx, dy = correction_at_centre(result)
    space = "" if result.ref.georeferenced else "  (pixel space: no georeferencing)"
    ref_name, mov_name = shorten(Path(result.ref.path).name, 50), shorten(Path(result.mov.path).name, 50)
    return (
        f"{shorten(title or Path(result.mov.path).name, 90)}\n"
        f"{sel.kind}, RMSE {sel.rmse_px:.2f} px, CE90 {sel.ce90_px:.2f} px, {_predicted_text(result.uncertainty)}, "
        f"inliers {sel.n_inliers}/{len(result.matches)}, tiles matched {result.tiles_matched}/{result.tiles}\n"
        f"correction at image centre: dx {dx:+.2f} px, dy {dy:+.2f} px{space}\n"
        f"reference {ref_name} (band {ref_band}), moving {mov_name} (band {mov_band}); grey: nodata or outside"
    )


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
