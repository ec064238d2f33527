"""The count of generated hostile-input cases, printed at the end of a run."""
from __future__ import annotations

CASES = {"count": 0}


def count(n: int = 1) -> None:
    CASES["count"] += n
