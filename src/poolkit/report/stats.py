"""The statistics of the report: means with t-intervals, paired-by-seed differences, Holm correction.

Runs that share a seed share their data order and augmentation, so two methods are compared on the
per-seed differences ``d_s = a_s - b_s`` over the seeds present for both (a paired design), not on two
independent means. With ``n`` shared seeds, ``d̄`` their mean and ``s_d`` their sample standard
deviation (``ddof=1``):

* 95% interval: ``d̄ ± t_{0.975, n-1} · s_d / √n``
* paired t-test: ``t = d̄ / (s_d / √n)`` with ``n - 1`` degrees of freedom, two-sided
  ``p = 2 · (1 - F_t(|t|; n-1))``
* Holm (1979) step-down correction over the ``m`` p-values of one family: sort them ascending,
  ``p̃_(i) = max_{j <= i} min(1, (m - j + 1) · p_(j))``.

Quantiles come from :data:`scipy.stats.t`; the rest is written out here so the formulas in
``docs/report.md`` are the code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy_stats

__all__ = [
    "PairedComparison",
    "Summary",
    "holm",
    "paired_comparison",
    "paired_t_test",
    "summarize",
    "t_interval",
    "t_quantile",
]


#: A spread this small relative to the values is floating-point noise (96.1 - 95.4 vs 95.4 - 94.7), not
#: a real difference between seeds.
_ZERO_SPREAD = 1e-9


def _as_values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite numbers, got {values!r}")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")


@dataclass(frozen=True)
class Summary:
    """Mean of ``n`` values with their sample standard deviation and t-interval of the mean.

    ``std``, ``ci_low``, ``ci_high`` and ``half_width`` are None when ``n < 2`` (one value has no spread);
    the interval is also None when all values are equal (a zero-width interval would claim certainty
    that a handful of identical, often quantised, accuracies cannot give).
    """

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2.0


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided t-interval of the mean: ``x̄ ± t_{(1+c)/2, n-1} · s / √n``.

    Raises:
        ValueError: fewer than two values (no spread, no interval) or non-finite values.

    Example:
        >>> low, high = t_interval([1.0, 2.0, 3.0])
        >>> round(low, 4), round(high, 4)
        (-0.4841, 4.4841)
    """
    arr = _as_values(values, "values")
    n = arr.size
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {n}")
    mean = float(arr.mean())
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    q = t_quantile(n - 1, confidence)
    return mean - q * sem, mean + q * sem


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Student's t quantile ``t_{(1+c)/2, df}``: a two-sided interval's half-width in standard errors.

    Example:
        >>> round(t_quantile(1), 3), round(t_quantile(2), 3), round(t_quantile(9), 3)
        (12.706, 4.303, 2.262)
    """
    _check_confidence(confidence)
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(_scipy_stats.t.ppf(0.5 + confidence / 2.0, df))


def summarize(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Summary:
    """Mean, sample standard deviation (``ddof=1``) and t-interval of ``values`` (at least one).

    Example:
        >>> s = summarize([72.5, 72.9, 72.7])
        >>> round(s.mean, 2), round(s.std, 2), s.n
        (72.7, 0.2, 3)
    """
    arr = _as_values(values, "values")
    if arr.size == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(arr.mean())
    if arr.size < 2:
        return Summary(n=1, mean=mean, std=None, ci_low=None, ci_high=None)
    std = float(arr.std(ddof=1))
    if std <= _ZERO_SPREAD * max(float(np.abs(arr).max()), 1.0):
        return Summary(n=int(arr.size), mean=mean, std=0.0, ci_low=None, ci_high=None)
    low, high = t_interval(arr, confidence)
    return Summary(n=int(arr.size), mean=mean, std=std, ci_low=low, ci_high=high)


def paired_t_test(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> tuple[float | None, float | None]:
    """Two-sided paired t-test of ``a - b`` (same result as :func:`scipy.stats.ttest_rel`).

    Returns ``(t, p)``; both None when ``n < 2`` or when every difference is zero (undefined).
    When the differences are identical but not zero, ``t`` is infinite and ``p`` is 0, as in scipy.

    Example:
        >>> t, p = paired_t_test([1.5, 2.7, 3.1], [1.0, 2.2, 2.0])
        >>> round(t, 4), round(p, 4)
        (3.5, 0.0728)
    """
    x = _as_values(a, "a")
    y = _as_values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired samples need the same length, got {x.size} and {y.size}")
    d = x - y
    n = d.size
    if n < 2:
        return None, None
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        if mean == 0.0:
            return None, None
        return math.copysign(math.inf, mean), 0.0
    t = mean / (sd / math.sqrt(n))
    p = float(2.0 * _scipy_stats.t.sf(abs(t), n - 1))
    return t, min(1.0, p)


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` paired by seed over the seeds both have.

    Attributes:
        n: number of shared seeds.
        seeds: the shared seeds, sorted.
        only_a, only_b: seeds present for one side only (left out of the comparison).
        mean: mean of the per-seed differences ``d_s`` (None when no seed is shared).
        std: their sample standard deviation (None when ``n < 2``).
        ci_low, ci_high: the t-interval of the mean difference (None when ``n < 2`` or ``std == 0``).
        t, p: the paired t-test (None when ``n < 2`` or ``std == 0``).
        confidence: the interval's level.

    Identical differences for every seed (``std == 0``, common with few seeds and accuracies quantised
    by a small test set) make the t-test degenerate (t = ±inf, p = 0 in scipy): that is no evidence,
    so no interval and no p-value are given (see :attr:`zero_spread`).
    """

    n: int
    seeds: tuple[int, ...]
    only_a: tuple[int, ...]
    only_b: tuple[int, ...]
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    t: float | None
    p: float | None
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2.0

    @property
    def zero_spread(self) -> bool:
        """True when at least two seeds are shared and every per-seed difference is the same."""
        return self.n >= 2 and self.std == 0.0

    @property
    def inconclusive(self) -> bool | None:
        """True when the interval contains 0; None when there is no interval (``n < 2``, zero spread)."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return self.ci_low <= 0.0 <= self.ci_high


def paired_comparison(
    a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95
) -> PairedComparison:
    """Compare ``a`` with ``b`` (``{seed: value}``) on the seeds they share.

    Example:
        >>> c = paired_comparison({0: 73.1, 1: 73.5, 2: 72.9}, {0: 72.7, 1: 72.8, 3: 72.6})
        >>> c.n, c.seeds, c.only_a, c.only_b, round(c.mean, 2)
        (2, (0, 1), (2,), (3,), 0.55)
    """
    _check_confidence(confidence)
    shared = tuple(sorted(set(a) & set(b)))
    only_a = tuple(sorted(set(a) - set(b)))
    only_b = tuple(sorted(set(b) - set(a)))
    n = len(shared)
    if n == 0:
        return PairedComparison(0, shared, only_a, only_b, None, None, None, None, None, None, confidence)
    x = _as_values([a[s] for s in shared], "a")
    y = _as_values([b[s] for s in shared], "b")
    d = x - y
    mean = float(d.mean())
    if n < 2:
        return PairedComparison(1, shared, only_a, only_b, mean, None, None, None, None, None, confidence)
    std = float(d.std(ddof=1))
    if std <= _ZERO_SPREAD * max(float(np.abs(x).max()), float(np.abs(y).max()), 1.0):
        return PairedComparison(n, shared, only_a, only_b, mean, 0.0, None, None, None, None, confidence)
    low, high = t_interval(d, confidence)
    t, p = paired_t_test(x, y)
    return PairedComparison(n, shared, only_a, only_b, mean, std, low, high, t, p, confidence)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; None entries stay None and do not count towards ``m``.

    Example:
        >>> [None if p is None else round(p, 3) for p in holm([0.01, 0.04, None, 0.03])]
        [0.03, 0.06, None, 0.06]
    """
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    for p, _ in present:
        if not (0.0 <= p <= 1.0) or math.isnan(p):
            raise ValueError(f"p-values must lie in [0, 1], got {p!r}")
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
