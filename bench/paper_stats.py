"""Mean ± standard error over training seeds, and the three-way verdict of a claimed difference.

Every comparison in docs/paper_findings.md pairs the two sides by training seed (seed s of model A
against seed s of model B, both sampled from the same prior keys), takes the per-seed differences
d_s and their 95% Student-t interval mean(d) ± t_{n-1} * SE(d). A claim that A is better (lower) than
B is judged:
  - holds            the whole interval lies on the claimed side of 0;
  - does not hold    the whole interval lies on the other side;
  - within noise     the interval contains 0.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

# Two-sided 95% Student-t quantiles by degrees of freedom (number of seeds - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
HOLDS, FAILS, NOISE = "**holds**", "**does not hold**", "**within noise**"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) of per-seed values; SE is nan for one value."""
    values = [float(v) for v in values]
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return m, se


def fmt(values: Sequence[float] | None, digits: int = 2, scale: float = 1.0) -> str:
    """'mean ± se' of per-seed values (times scale), or 'not run'."""
    if not values:
        return "not run"
    m, se = mean_se([v * scale for v in values])
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the paired differences a_s - b_s: 95% Student-t interval."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired comparison needs two equal lists of >= 2 seeds, got {len(a)} "
                         f"and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    m, se = mean_se(d)
    half = _T95.get(len(d) - 1, 1.96) * se
    return m, m - half, m + half


def better(a: Sequence[float] | None, b: Sequence[float] | None, *, lower: bool = True
           ) -> tuple[str, str]:
    """(verdict, 'diff [low, high]') of the claim 'a is better than b' (lower, or higher)."""
    if not a or not b:
        return "not run", ""
    m, lo, hi = interval(a, b)
    if not lower:
        m, lo, hi = -m, -hi, -lo
    verdict = HOLDS if hi < 0 else FAILS if lo > 0 else NOISE
    return verdict, f"{m:+.3g} [{lo:+.3g}, {hi:+.3g}]"


def unchanged(a: Sequence[float] | None, b: Sequence[float] | None) -> tuple[str, str]:
    """(verdict, 'diff [low, high]') of the claim 'a equals b': holds when 0 is in the interval."""
    if not a or not b:
        return "not run", ""
    m, lo, hi = interval(a, b)
    return (HOLDS if lo <= 0 <= hi else FAILS), f"{m:+.3g} [{lo:+.3g}, {hi:+.3g}]"

