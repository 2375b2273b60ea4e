"""poolkit.report.stats against scipy and against hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from poolkit.report.stats import holm, paired_comparison, paired_t_test, summarize, t_interval


def test_hand_worked_paired_example():
    # a - b = [0.5, 0.5, 1.1]: mean 0.7, s = sqrt(0.24 / 2) = 0.34641, se = s / sqrt(3) = 0.2, t = 3.5,
    # t_{0.975, 2} = 4.302653, half-width = 0.860531.
    a, b = [1.5, 2.7, 3.1], [1.0, 2.2, 2.0]
    t, p = paired_t_test(a, b)
    assert t == pytest.approx(3.5)
    assert p == pytest.approx(0.07282735, abs=1e-7)
    c = paired_comparison(dict(enumerate(a)), dict(enumerate(b)))
    assert c.n == 3 and c.mean == pytest.approx(0.7)
    assert c.std == pytest.approx(math.sqrt(0.12))
    assert c.ci_low == pytest.approx(0.7 - 0.860531, abs=1e-6)
    assert c.ci_high == pytest.approx(0.7 + 0.860531, abs=1e-6)
    assert c.half_width == pytest.approx(0.860531, abs=1e-6)
    assert c.inconclusive is True


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_paired_test_and_interval_match_scipy(n):
    rng = np.random.default_rng(n)
    a = 70 + rng.normal(size=n)
    b = a - 0.4 + 0.3 * rng.normal(size=n)
    reference = sps.ttest_rel(a, b)
    t, p = paired_t_test(a, b)
    assert t == pytest.approx(reference.statistic, rel=1e-10)
    assert p == pytest.approx(reference.pvalue, rel=1e-10)
    ci = reference.confidence_interval(0.95)
    c = paired_comparison(dict(enumerate(a)), dict(enumerate(b)))
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert c.p == pytest.approx(reference.pvalue, rel=1e-10)


def test_t_interval_matches_scipy_and_other_levels():
    values = [72.5, 72.9, 72.7, 73.4]
    low, high = t_interval(values, 0.9)
    ref = sps.t.interval(0.9, 3, loc=np.mean(values), scale=sps.sem(values))
    assert (low, high) == pytest.approx(ref)
    s = summarize(values)
    assert s.n == 4 and s.std == pytest.approx(np.std(values, ddof=1))
    assert (s.ci_low, s.ci_high) == pytest.approx(
        sps.t.interval(0.95, 3, loc=np.mean(values), scale=sps.sem(values))
    )


def test_single_value_has_no_spread_and_no_interval():
    s = summarize([71.0])
    assert (s.n, s.mean, s.std, s.ci_low, s.half_width) == (1, 71.0, None, None, None)
    c = paired_comparison({0: 72.0}, {0: 71.5})
    assert c.n == 1 and c.mean == pytest.approx(0.5)
    assert c.ci_low is None and c.p is None and c.inconclusive is None
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])


def test_pairing_uses_only_shared_seeds():
    a = {0: 73.0, 1: 74.0, 2: 73.5, 5: 80.0}
    b = {0: 72.0, 1: 72.5, 2: 72.9, 3: 10.0}
    c = paired_comparison(a, b)
    assert c.seeds == (0, 1, 2) and c.only_a == (5,) and c.only_b == (3,)
    assert c.mean == pytest.approx(np.mean([1.0, 1.5, 0.6]))
    assert c.p == pytest.approx(sps.ttest_rel([73.0, 74.0, 73.5], [72.0, 72.5, 72.9]).pvalue)
    none = paired_comparison({1: 1.0}, {2: 2.0})
    assert none.n == 0 and none.mean is None


def test_zero_variance_differences():
    # identical non-zero differences: scipy gives t = inf, p = 0; all-zero differences are undefined.
    t, p = paired_t_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert t == math.inf and p == 0.0
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]) == (None, None)
    # paired_comparison gives no interval and no p-value for identical differences: no evidence either way
    c = paired_comparison({0: 96.1, 1: 95.4, 2: 95.9}, {0: 95.4, 1: 94.7, 2: 95.2})
    assert c.zero_spread and c.std == 0.0 and c.mean == pytest.approx(0.7)
    assert c.ci_low is None and c.p is None and c.inconclusive is None
    assert summarize([96.0, 96.0]).ci_low is None and summarize([96.0, 96.0]).std == 0.0


def test_holm_hand_worked():
    # m = 4, sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capping at 1 and None entries that do not count towards m
    adjusted = holm([0.5, None, 0.6])
    assert adjusted[1] is None and adjusted[0] == pytest.approx(1.0) and adjusted[2] == pytest.approx(1.0)
    assert holm([]) == []
    assert holm([0.2]) == [0.2]


def test_holm_properties_on_random_pvalues():
    rng = np.random.default_rng(0)
    p = list(rng.uniform(0, 0.2, size=7))
    adjusted = holm(p)
    assert all(a >= raw for a, raw in zip(adjusted, p, strict=True))
    order = np.argsort(p)
    assert all(adjusted[order[i]] <= adjusted[order[i + 1]] for i in range(len(p) - 1))
    assert max(adjusted) <= 1.0
    # Holm is never worse than Bonferroni
    assert all(a <= min(1.0, 7 * raw) + 1e-12 for a, raw in zip(adjusted, p, strict=True))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], 95)
    with pytest.raises(ValueError, match="same length"):
        paired_t_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])
