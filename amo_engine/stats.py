"""Paired significance for the evaluations: one exact test, shared by eval and the LoRA study."""

from __future__ import annotations

import math


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: discordant pairs under H0 split 50/50 (binomial)."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
