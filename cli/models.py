"""`dmreg models`: the available matchers and weights, with their provenance."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dmreg.matchers import MATCHER_DESCRIPTIONS


def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")] = False,
) -> None:
    """List matchers and shipped DistillMatch weights (what data, teacher, steps and hardware made them)."""
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


def _shipped_weights() -> list[dict]:
    try:
        from dmreg.matchers.distillmatch.weights import available
    except ImportError:
        return []
    return [card.summary() for card in available()]
