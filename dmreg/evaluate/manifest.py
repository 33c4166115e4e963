"""Evaluation manifests: image pairs with a ground-truth mapping, as CSV or JSON.

Conventions as everywhere in dmreg: pixel coordinates are (x=col, y=row) with (0, 0)
the top-left CORNER of the top-left pixel, and the truth maps MOVING pixels to
REFERENCE pixels. Relative paths are relative to the manifest's folder.

CSV (``manifest.csv``): a header line, then one pair per line::

    name,reference,moving,modalities,matrix
    l7-red-swir2,red.tif,swir2.tif,optical-swir,1 0 -4.5 0 1 3.25 0 0 1

- required columns ``name`` (unique), ``reference``, ``moving``, ``modalities`` (a
  label such as ``optical-thermal``: the results are summarised per label);
- the truth, exactly one of ``matrix`` (9 numbers separated by spaces: the row-major
  3 x 3 matrix mapping moving pixels to reference pixels) or ``check_points`` (the path
  of a CSV of ``x_mov,y_mov,x_ref,y_ref`` rows, header optional: the error is then
  measured at those points instead of on a 10 x 10 grid);
- optional ``ref_band``, ``mov_band`` (1-based bands to match; empty = the command's
  ``--ref-band``/``--mov-band``), ``truth_tolerance_px`` (how exact the truth is, e.g.
  2.5 for Sentinel-1 against Sentinel-2; reported, not used in the metrics), ``origin``
  (where the files come from). Other columns are an error (a typo must not silently
  drop the truth).

JSON (``manifest.json``)::

    {"schema": "dmreg.pairs/1",
     "pairs": [{"name": "...", "reference": "...", "moving": "...", "modalities": "optical-sar",
                "matrix": [[1, 0, -4.5], [0, 1, 3.25], [0, 0, 1]],
                "ref_band": 1, "mov_band": 1, "truth_tolerance_px": 2.5, "origin": "..."}]}

with ``"check_points": [[x_mov, y_mov, x_ref, y_ref], ...]`` instead of ``matrix`` where
wanted, and ``warp`` (a free-form object: how the moving image was made) also allowed
in a pair. Other top-level keys are metadata and ignored; other keys in a pair are an
error.

A malformed manifest is a :class:`UsageError` (exit code 2); a manifest, image or
check-point file that does not exist is an :class:`InputError` (exit code 3).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmreg.errors import InputError, UsageError
from dmreg.io.tables import csv_rows

SCHEMA = "dmreg.pairs/1"
MANIFEST_NAMES = ("manifest.json", "manifest.csv")
"""The file names looked for when a folder is given."""

REQUIRED = ("name", "reference", "moving", "modalities")
TRUTH = ("matrix", "check_points")
OPTIONAL_CSV = ("ref_band", "mov_band", "truth_tolerance_px", "origin")
OPTIONAL_JSON = (*OPTIONAL_CSV, "warp")
CHECK_POINT_COLUMNS = ("x_mov", "y_mov", "x_ref", "y_ref")


@dataclass(frozen=True)
class EvalPair:
    """One pair to register and its ground truth: ``matrix`` (3 x 3, moving pixel ->
    reference pixel) or ``check_points`` ((x_mov, y_mov, x_ref, y_ref) rows). Paths are
    absolute; bands None mean the command's defaults."""

    name: str
    reference: str
    moving: str
    modalities: str
    matrix: tuple[tuple[float, float, float], ...] | None = None
    check_points: tuple[tuple[float, float, float, float], ...] | None = None
    ref_band: int | None = None
    mov_band: int | None = None
    truth_tolerance_px: float = 0.0
    origin: str | None = None

    def __post_init__(self) -> None:
        if (self.matrix is None) == (self.check_points is None):
            raise ValueError("a pair needs exactly one of matrix and check_points")

    def truth(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The true reference pixel of moving pixel (x, y), through ``matrix`` (a pair
        with ``check_points`` only knows the truth at those points: ValueError)."""
        if self.matrix is None:
            raise ValueError(f"pair {self.name!r} has check points, not a matrix: its truth is known only there")
        m = np.asarray(self.matrix, dtype=np.float64)
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        w = m[2, 0] * x + m[2, 1] * y + m[2, 2]
        return (m[0, 0] * x + m[0, 1] * y + m[0, 2]) / w, (m[1, 0] * x + m[1, 1] * y + m[1, 2]) / w

    def points(self) -> np.ndarray:
        """The check points as an N x 4 array (x_mov, y_mov, x_ref, y_ref)."""
        if self.check_points is None:
            raise ValueError(f"pair {self.name!r} has a matrix, not check points")
        return np.asarray(self.check_points, dtype=np.float64).reshape(-1, 4)


def find_manifest(path: str | Path) -> Path:
    """The manifest file: ``path`` itself, or ``manifest.json``/``manifest.csv`` in the
    folder ``path``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder (expected a folder with manifest.json or manifest.csv, or a "
                         "manifest file)")
    if p.is_file():
        return p
    found = [p / name for name in MANIFEST_NAMES if (p / name).is_file()]
    if not found:
        raise InputError(f"{p}: no {' or '.join(MANIFEST_NAMES)} in this folder")
    if len(found) > 1:
        raise UsageError(f"{p}: both manifest.json and manifest.csv are here; give the one to use as the path")
    return found[0]


def load_manifest(path: str | Path) -> list[EvalPair]:
    """Read and check a manifest (a file, or a folder holding one): every pair's truth
    is well-formed and every file it names exists."""
    manifest = find_manifest(path)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest}: cannot read the manifest ({exc})") from None
    if manifest.suffix.lower() == ".json":
        pairs = _from_json(manifest, text)
    elif manifest.suffix.lower() == ".csv":
        pairs = _from_csv(manifest, text)
    else:
        raise UsageError(f"{manifest}: a manifest is a .json or .csv file")
    if not pairs:
        raise UsageError(f"{manifest}: the manifest lists no pairs")
    twice = sorted(n for n, count in Counter(p.name for p in pairs).items() if count > 1)
    if twice:
        raise UsageError(f"{manifest}: pair names must be unique; used more than once: {', '.join(twice)}")
    return pairs


def _from_json(manifest: Path, text: str) -> list[EvalPair]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{manifest}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UsageError(f"{manifest}: not a dmreg pairs manifest (schema {found!r}, expected {SCHEMA!r})")
    entries = data.get("pairs")
    if not isinstance(entries, list):
        raise UsageError(f"{manifest}: 'pairs' must be a list of objects")
    base = manifest.resolve().parent
    pairs = []
    for i, entry in enumerate(entries):
        where = f"{manifest}, pair {i + 1}"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: expected an object, found {type(entry).__name__}")
        if isinstance(entry.get("name"), str) and entry["name"].strip():
            where = f"{manifest}, pair {entry['name']!r}"
        unknown = sorted(set(entry) - {*REQUIRED, *TRUTH, *OPTIONAL_JSON})
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; a pair has "
                             f"{', '.join((*REQUIRED, *TRUTH, *OPTIONAL_JSON))}")
        fields = {key: _text(entry.get(key), key, where) for key in REQUIRED}
        matrix = points = None
        _exactly_one_truth(entry.get("matrix"), entry.get("check_points"), where)
        if entry.get("matrix") is not None:
            matrix = _matrix(entry["matrix"], where)
        else:
            points = _points(entry["check_points"], where)
        origin = entry.get("origin")
        pairs.append(_pair(base, where, fields, matrix, points, entry.get("ref_band"), entry.get("mov_band"),
                           entry.get("truth_tolerance_px"),
                           None if origin is None else origin if isinstance(origin, str) else json.dumps(origin)))
    return pairs


def _from_csv(manifest: Path, text: str) -> list[EvalPair]:
    rows = csv_rows(text)
    if not rows:
        raise UsageError(f"{manifest}: the manifest is empty")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in REQUIRED if c not in header]
    if missing or not any(c in header for c in TRUTH):
        need = [*missing, *([] if any(c in header for c in TRUTH) else ["matrix or check_points"])]
        raise UsageError(f"{manifest}: the header lacks {', '.join(need)} (found {','.join(header)}; expected "
                         f"{','.join(REQUIRED)},matrix[,{','.join(OPTIONAL_CSV)}])")
    unknown = [c for c in header if c not in (*REQUIRED, *TRUTH, *OPTIONAL_CSV)]
    if unknown or len(set(header)) < len(header):
        raise UsageError(f"{manifest}: unknown or repeated column(s) {', '.join(unknown) or 'in the header'}; "
                         f"the columns are {', '.join((*REQUIRED, *TRUTH, *OPTIONAL_CSV))}")
    base = manifest.resolve().parent
    pairs = []
    for line, row in enumerate(rows[1:], start=2):
        where = f"{manifest}, line {line}"
        if len(row) > len(header):
            raise UsageError(f"{where}: {len(row)} cells but {len(header)} columns (quote a cell that holds a comma)")
        cell = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header)}
        fields = {key: _text(cell[key], key, where) for key in REQUIRED}
        matrix_text, points_path = cell.get("matrix") or None, cell.get("check_points") or None
        _exactly_one_truth(matrix_text, points_path, where)
        matrix = points = None
        if matrix_text is not None:
            matrix = _matrix(_numbers(matrix_text, "matrix", where), where)
        else:
            points = _points(_read_points_csv(base / points_path, where), where)
        pairs.append(_pair(base, where, fields, matrix, points, cell.get("ref_band") or None,
                           cell.get("mov_band") or None, cell.get("truth_tolerance_px") or None,
                           cell.get("origin") or None))
    return pairs


def _pair(base: Path, where: str, fields: dict[str, str], matrix, points, ref_band, mov_band, tolerance,
          origin: str | None) -> EvalPair:
    paths = {}
    for key in ("reference", "moving"):
        p = base / fields[key]
        if not p.is_file():
            raise InputError(f"{where}: {key} image {p} not found")
        paths[key] = str(p.resolve())
    return EvalPair(
        name=fields["name"], reference=paths["reference"], moving=paths["moving"], modalities=fields["modalities"],
        matrix=matrix, check_points=points, ref_band=_band(ref_band, "ref_band", where),
        mov_band=_band(mov_band, "mov_band", where), truth_tolerance_px=_tolerance(tolerance, where), origin=origin,
    )


def _exactly_one_truth(matrix: object, points: object, where: str) -> None:
    if matrix is None and points is None:
        raise UsageError(f"{where}: give the truth as matrix or as check_points")
    if matrix is not None and points is not None:
        raise UsageError(f"{where}: give the truth as matrix or as check_points, not both")


def _text(value: object, key: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where}: {key} is required (a non-empty string)")
    return value.strip()


def _numbers(text: str, key: str, where: str) -> list[float]:
    try:
        return [float(v) for v in re.split(r"[\s,;]+", text.strip()) if v]
    except ValueError:
        raise UsageError(f"{where}: {key} {text!r} is not a list of numbers") from None


def _matrix(value: object, where: str) -> tuple[tuple[float, float, float], ...]:
    """A 3 x 3 from 9 numbers (CSV) or 3 rows of 3 (JSON): finite and invertible."""
    expected = "9 numbers (the row-major 3 x 3 matrix mapping moving pixels to reference pixels)"
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: matrix must be {expected}") from None
    if m.shape == (9,):
        m = m.reshape(3, 3)
    if m.shape != (3, 3):
        raise UsageError(f"{where}: matrix must be {expected}; found {m.size} value(s) in shape {m.shape}")
    if not np.isfinite(m).all():
        raise UsageError(f"{where}: matrix holds a value that is not a finite number")
    if abs(np.linalg.det(m)) < 1e-12:
        raise UsageError(f"{where}: matrix is singular: it cannot map one image onto another")
    return tuple(tuple(float(v) for v in row) for row in m)


def _points(value: object, where: str) -> tuple[tuple[float, float, float, float], ...]:
    try:
        p = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        p = np.zeros((0, 0))
    if p.ndim != 2 or p.shape[1] != 4 or len(p) == 0:
        raise UsageError(f"{where}: check_points must be one or more rows of 4 numbers: "
                         f"{','.join(CHECK_POINT_COLUMNS)}")
    if not np.isfinite(p).all():
        raise UsageError(f"{where}: check_points hold a value that is not a finite number")
    return tuple(tuple(float(v) for v in row) for row in p)


def _read_points_csv(path: Path, where: str) -> list[list[float]]:
    if not path.is_file():
        raise InputError(f"{where}: check-point file {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: cannot read {path} ({exc})") from None
    rows = csv_rows(text)
    if rows and [c.strip().lower() for c in rows[0]] == list(CHECK_POINT_COLUMNS):
        rows = rows[1:]
    out = []
    for i, row in enumerate(rows, start=1):
        try:
            out.append([float(c) for c in row])
        except ValueError:
            raise UsageError(f"{where}: {path}, row {i}: expected 4 numbers {','.join(CHECK_POINT_COLUMNS)}, "
                             f"found {','.join(row)}") from None
    return out


def _band(value: object, key: str, where: str) -> int | None:
    if value is None:
        return None
    try:
        band = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else 0
    except (TypeError, ValueError):
        band = 0
    if band < 1:
        raise UsageError(f"{where}: {key} must be a band number (1, 2, ...), found {value!r}")
    return band


def _tolerance(value: object, where: str) -> float:
    if value is None:
        return 0.0
    try:
        tol = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        tol = math.nan
    if not math.isfinite(tol) or tol < 0:
        raise UsageError(f"{where}: truth_tolerance_px must be a non-negative number, found {value!r}")
    return tol
