"""Small CSV tables users write by hand (manifests, check points)."""

from __future__ import annotations

import csv


def csv_rows(text: str) -> list[list[str]]:
    """The rows of CSV ``text``, leaving out blank lines and lines whose first cell
    starts with ``#`` (comments a user may keep in a hand-written table)."""
    return [row for row in csv.reader(text.splitlines())
            if any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")]
