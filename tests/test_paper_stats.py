"""bench/paper_stats.py: the paired 95% Student-t intervals behind docs/paper_findings.md's verdicts."""

import math

import numpy as np
import pytest
from scipy import stats

from bench import paper_stats as st


def test_interval_is_the_student_t_interval_of_the_paired_differences():
    a, b = [1.0, 2.0, 3.2, 0.4], [1.5, 2.1, 3.9, 1.6]
    d = np.subtract(a, b)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    m, lo, hi = st.interval(a, b)
    np.testing.assert_allclose([m, lo, hi], [d.mean(), d.mean() - half, d.mean() + half], rtol=1e-3)


@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_t_factors_match_scipy(seeds):
    assert st._T95[seeds - 1] == pytest.approx(stats.t.ppf(0.975, seeds - 1), abs=1e-3)


def test_verdicts_follow_the_side_of_the_interval():
    base = [10.0, 12.0, 11.0]
    clearly_lower = [b - 3.0 + e for b, e in zip(base, (0.1, -0.1, 0.0))]
    clearly_higher = [b + 3.0 + e for b, e in zip(base, (0.1, -0.1, 0.0))]
    noisy = [b + e for b, e in zip(base, (2.0, -2.0, 0.5))]
    assert st.better(clearly_lower, base)[0] == st.HOLDS
    assert st.better(clearly_higher, base)[0] == st.FAILS
    assert st.better(noisy, base)[0] == st.NOISE
    # Higher is better: the same data read the other way round.
    assert st.better(clearly_higher, base, lower=False)[0] == st.HOLDS
    # 'Unchanged' holds while 0 is inside the interval.
    assert st.unchanged(noisy, base)[0] == st.HOLDS
    assert st.unchanged(clearly_lower, base)[0] == st.FAILS
    assert st.better(None, base)[0] == "not run"


def test_mean_se_and_format():
    m, se = st.mean_se([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3)
    assert se == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1) / math.sqrt(3))
    assert st.fmt([1.0, 2.0, 4.0], 1) == f"{7 / 3:.1f} ± {se:.1f}"
    assert st.fmt(None) == "not run"
    with pytest.raises(ValueError):
        st.interval([1.0], [2.0])
