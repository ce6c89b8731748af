"""Close matches for a mistyped name: the one "did you mean" helper of every error message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["close_matches", "did_you_mean"]


def close_matches(
    name: str, candidates: Iterable[str], *, n: int = 3, cutoff: float = 0.6, ignore_case: bool = True
) -> list[str]:
    """Up to ``n`` candidates close to ``name`` (best first), spelled as in ``candidates``."""
    if not ignore_case:
        return difflib.get_close_matches(name, list(candidates), n=n, cutoff=cutoff)
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    return [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=cutoff)]


def did_you_mean(name: str, candidates: Iterable[str], *, quote: bool = True, **options) -> str:
    """``" (did you mean 'a', 'b'?)"`` for the close matches of ``name``, or ``""`` when there are none."""
    close = close_matches(name, candidates, **options)
    if not close:
        return ""
    return f" (did you mean {', '.join(repr(c) if quote else c for c in close)}?)"
