"""`dmreg models`: the available matchers and weights, with their provenance; `dmreg
models export`: DistillMatch weights as an ONNX graph for ONNX Runtime."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from .console import exit_codes, stderr
from .options import Debug, Overwrite
from dmreg.errors import UsageError
from dmreg.matchers import MATCHER_DESCRIPTIONS, TilePair
from dmreg.matchers.distillmatch.onnx_format import DEFAULT_OPSET, OPSETS

EXAMPLE_DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
CHECK_TILES = ((0, 0, 256, 256), (96, 93, 256, 256), (160, 120, 192, 229))
"""(row, col, height, width) of the tiles of the L7 scene `export --check` matches; the
last one's width is no multiple of the coarse stride."""

models_app = typer.Typer(help="Matchers and DistillMatch weights: list them, export weights to ONNX.")


@models_app.callback(invoke_without_command=True)
def models_command(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")] = False,
) -> None:
    """List matchers and shipped DistillMatch weights (what data, teacher, steps and hardware made them)."""
    if ctx.invoked_subcommand is not None:
        return
    weights = _shipped_weights()
    if as_json:
        typer.echo(json.dumps({"matchers": MATCHER_DESCRIPTIONS, "weights": weights}, indent=2))
        return
    console = Console()
    table = Table(title="matchers", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("what")
    for name, text in MATCHER_DESCRIPTIONS.items():
        table.add_row(name, text)
    console.print(table)
    table = Table(title="distillmatch weights", title_justify="left")
    for column in ("name", "sha256", "teacher", "data", "steps", "hardware"):
        table.add_column(column)
    for w in weights:
        p = w.get("provenance", {})
        data = sorted(p["data_sources"]) if "data_sources" in p else p.get("data", "?")  # collections, not 70 scenes
        table.add_row(w["name"], w.get("sha256", "")[:12], str(p.get("teacher", "?")),
                      ", ".join(data) if isinstance(data, list) else str(data),
                      str(p.get("steps", "?")), str(p.get("hardware", "?")))
    if not weights:
        table.caption = "none found (distillmatch needs PyTorch and a weights file)"
    console.print(table)


@models_app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(help="DistillMatch weights: a shipped name (see `dmreg models`) or a path.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="The ONNX file to write.")],
    opset: Annotated[int, typer.Option(
        "--opset", help=f"ONNX opset of the graph ({OPSETS.start} to {OPSETS.stop - 1}).")] = DEFAULT_OPSET,
    overwrite: Overwrite = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help=(
        "Match tiles of the example data with PyTorch and ONNX Runtime and compare their matches."))] = True,
    debug: Debug = False,
) -> None:
    """Export DistillMatch weights as one ONNX graph, to run with `--weights FILE.onnx` without PyTorch.

    Exit codes: 0 ok, 1 the check found the backends disagreeing, 2 bad option or a package missing,
    3 weights not found or invalid, 6 output exists (use --overwrite).
    """
    with exit_codes(debug):
        try:
            from dmreg.matchers.distillmatch.onnx_export import check_export, export_onnx
        except ImportError as exc:
            raise UsageError(f"exporting needs PyTorch: pip install 'dmreg[distillmatch]' ({exc})") from exc
        if check and importlib.util.find_spec("onnxruntime") is None:  # before the export, not after it
            raise UsageError("--check runs the graph with ONNX Runtime: pip install 'dmreg[onnx]', or pass --no-check")
        done = export_onnx(name, onnx, opset=opset, overwrite=overwrite)
        stderr.print(f"wrote {done['path']} ({done['bytes'] / 2**20:.1f} MiB, opset {done['opset']}) from "
                     f"{done['weights']} (sha256 {done['weights_sha256'][:12]})", markup=False, highlight=False)
        if not check:
            return
        pairs = _check_pairs()
        if pairs is None:
            stderr.print(f"check skipped: no example data in {EXAMPLE_DATA} (a source checkout has it)",
                         markup=False, highlight=False)
            return
        result = check_export(name, onnx, pairs)
    stderr.print(f"check on {result['pairs']} tiles of the example data: PyTorch {result['matches_torch']} matches "
                 f"({result['seconds_torch']:.2f} s), ONNX Runtime {result['matches_onnx']} matches "
                 f"({result['seconds_onnx']:.2f} s), {result['common']} in common, largest coordinate difference "
                 f"{result['max_diff_px']:.2g} px", markup=False, highlight=False)
    if not result["agrees"]:
        stderr.print("[bold red]error:[/] the ONNX graph's matches differ from PyTorch's beyond the check's "
                     "tolerance", highlight=False)
        raise typer.Exit(1)


def _check_pairs() -> list[TilePair] | None:
    """Tiles of L7 red (reference) and SWIR2 (moving, the offset example), the same
    pixels of both, contrast-stretched as registration does; None without the data."""
    import rasterio

    from dmreg.io.sampling import normalise_contrast

    paths = EXAMPLE_DATA / "L7_ETMs.tif", EXAMPLE_DATA / "L7_SWIR2_offset.tif"
    if not all(p.is_file() for p in paths):
        return None
    with rasterio.open(paths[0]) as ref_ds, rasterio.open(paths[1]) as mov_ds:
        red, swir2 = ref_ds.read(3).astype(np.float32), mov_ds.read(1).astype(np.float32)
    pairs = []
    for row, col, h, w in CHECK_TILES:
        ref, mov = red[row:row + h, col:col + w], swir2[row:row + h, col:col + w]
        ok = np.ones(ref.shape, bool)
        pairs.append(TilePair(normalise_contrast(ref, ok), normalise_contrast(mov, ok), ok, ok, max_offset=16))
    return pairs


def _shipped_weights() -> list[dict]:
    try:
        from dmreg.matchers.distillmatch.weights import available
    except ImportError:
        return []
    return [card.summary() for card in available()]
