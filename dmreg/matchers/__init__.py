"""Matchers and the registry that names them."""

from __future__ import annotations

from collections.abc import Callable

from dmreg.errors import UsageError
from dmreg.matchers.base import MODALITIES, Matcher, TileMatches, TilePair
from dmreg.matchers.sift import SiftMatcher
from dmreg.matchers.structural import StructuralMatcher

MATCHERS: dict[str, Callable[[], Matcher]] = {
    "structural": StructuralMatcher,
    "sift": SiftMatcher,
}


def get_matcher(name: str) -> Matcher:
    """A matcher by name; UsageError listing the valid names otherwise."""
    try:
        return MATCHERS[name]()
    except KeyError:
        raise UsageError(f"unknown matcher {name!r}; choose one of: {', '.join(MATCHERS)}") from None


__all__ = ["MATCHERS", "MODALITIES", "Matcher", "TileMatches", "TilePair", "get_matcher"]
