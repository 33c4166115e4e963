"""Accuracy measurement: registration error against known truth over many pairs.

``manifest`` reads the pairs and their truth (CSV or JSON, schema dmreg.pairs/1),
``runner`` registers them with one or more matchers through the estimation
`dmreg register` uses, ``metrics`` turns the errors into success rates, median and AUC.
"""

from dmreg.evaluate.manifest import EvalPair, load_manifest
from dmreg.evaluate.metrics import AUC_MAX_PX, SUCCESS_THRESHOLDS_PX, auc, median_error, success_rate, success_rates
from dmreg.evaluate.runner import (ALL, SCHEMA, Evaluation, GroupSummary, MatcherSpec, PairResult, parse_matchers,
                                   run_evaluation, select_pairs, summarise, WRONG_PX)

__all__ = [
    "ALL", "AUC_MAX_PX", "SCHEMA", "SUCCESS_THRESHOLDS_PX", "EvalPair", "Evaluation", "GroupSummary", "MatcherSpec",
    "PairResult", "auc", "load_manifest", "median_error", "parse_matchers", "run_evaluation", "select_pairs",
    "success_rate", "success_rates", "summarise", "WRONG_PX",
]
