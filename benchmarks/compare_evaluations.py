"""Merge `dmreg evaluate --json` files into one table: per modality pair, each matcher's
SR@3, SR@10, median error, AUC@10 and failures, side by side, plus rows on subsets
(``--split NAME=SUBSTRING`` keeps pairs whose name contains SUBSTRING, e.g. the rotated
copies). Accuracy numbers of `dmreg evaluate` do not depend on the load of the machine,
so runs made in separate processes compare exactly; times do not (they are left out).

    python benchmarks/compare_evaluations.py runs/eval/classical.json runs/eval/v0.2.json runs/eval/v1.json \\
        --split shift=-shift --split rotated=-rot --markdown
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from dmreg.evaluate.metrics import auc, median_error, success_rates


def rows(paths: list[Path]) -> list[dict]:
    out = []
    for path in paths:
        out.extend(json.loads(path.read_text(encoding="utf-8"))["pairs"])
    return out


def summarise(pairs: list[dict], split: dict[str, str]) -> dict[tuple[str, str, str], dict]:
    """(subset, modalities, matcher) -> metrics over those pairs."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for p in pairs:
        error = p["error_px"] if p["status"] == "ok" and p["error_px"] is not None else math.inf
        for subset, needle in {"all": "", **split}.items():
            if needle in p["name"]:
                groups[(subset, p["modalities"], p["matcher"])].append(error)
                groups[(subset, "all", p["matcher"])].append(error)
    out = {}
    for key, errors in groups.items():
        e = np.asarray(errors, float)
        sr = success_rates(e)
        out[key] = {"n": len(e), "sr3": sr[3.0], "sr10": sr[10.0], "median": median_error(e), "auc": auc(e),
                    "failures": int(np.isinf(e).sum())}
    return out


def table(summary: dict, markdown: bool) -> str:
    matchers = sorted({m for _, _, m in summary}, key=lambda m: (not m.startswith(("structural", "sift")), m))
    lines = []
    sep = " | " if markdown else "  "
    head = ["subset", "modalities", "n"] + [f"{m} SR@3 / SR@10 / median / AUC" for m in matchers]
    lines.append(sep.join(head))
    if markdown:
        lines.append("|".join(["---"] * len(head)))
    for subset, modalities in sorted({(s, mo) for s, mo, _ in summary}, key=lambda k: (k[0] != "all", k)):
        cells = [subset, modalities]
        n = next(summary[(subset, modalities, m)]["n"] for m in matchers if (subset, modalities, m) in summary)
        cells.append(str(n))
        for m in matchers:
            s = summary.get((subset, modalities, m))
            med = "-" if s is None or not math.isfinite(s["median"]) else f"{s['median']:.2f}"
            cells.append("-" if s is None else f"{s['sr3']:.2f} / {s['sr10']:.2f} / {med} / {s['auc']:.2f}")
        lines.append(sep.join(cells))
    return "\n".join(("| " + line + " |") if markdown else line for line in lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="dmreg evaluate --json files")
    ap.add_argument("--split", action="append", default=[], help="NAME=SUBSTRING of pair names")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    split = dict(s.split("=", 1) for s in args.split)
    print(table(summarise(rows(args.results), split), args.markdown))


if __name__ == "__main__":
    main()
