"""Options shared by several commands, defined once."""

from __future__ import annotations

from typing import Annotated

import typer

from dmreg.errors import UsageError

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print errors only (for cron).")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail; repeat for debug logs.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
CreationOptions = Annotated[
    list[str] | None,
    typer.Option("--co", metavar="NAME=VALUE", help="GeoTIFF creation option, repeatable (e.g. --co COMPRESS=ZSTD)."),
]


def parse_creation_options(items: list[str] | None) -> dict[str, str]:
    """``["COMPRESS=ZSTD", ...]`` -> ``{"compress": "ZSTD"}``; UsageError on a malformed item."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--co {item!r}: expected NAME=VALUE")
        out[name.strip().lower()] = value.strip()
    return out
