"""The report's names and numbers as text: method, model and dataset titles, their sort orders, and
the formatting of values, p-values and paired comparisons in the tables."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from poolkit.models import FAMILIES, ModelSpec, get_model_spec
from poolkit.registry import STUDY_METHODS
from poolkit.report.runs import options_label
from poolkit.report.stats import PairedComparison

__all__ = [
    "BASELINE",
    "PARAMETER_MEANINGS",
    "STUDY_ORDER",
    "dataset_order",
    "dataset_title",
    "format_comparison",
    "format_number",
    "format_p",
    "method_order",
    "method_title",
    "model_family",
    "model_order",
    "model_title",
    "seed_list",
    "seed_word",
]

#: The study's order of methods in Table 1; any other method follows, sorted by name.
STUDY_ORDER = STUDY_METHODS
BASELINE = "max"

_DATASET_ORDER = ("cifar10", "cifar100", "tinyimagenet")

#: What the learned values of the adaptive methods mean, for table captions and axis labels.
PARAMETER_MEANINGS = {
    "lambda": "weight on max (1 = max, 0 = average)",
    "m": "weight on max (1 = max, 0 = average)",
    "threshold": "threshold T (activation units)",
    "p": "GeM exponent p (1 = average, large = max)",
}


# ----------------------------------------------------------------------------------------- names


def method_title(pool: str, options: dict[str, Any] | None = None) -> str:
    """The registry's ``PoolSpec.title`` (the pool name for methods this poolkit does not know),
    ``"(baseline)"`` for max, and the non-default options in parentheses."""
    from poolkit.registry import get_pool_spec

    try:
        title = get_pool_spec(pool).title
    except ValueError:
        title = pool
    if pool == BASELINE and not options:
        return f"{title} (baseline)"
    return f"{title} ({options_label(options)})" if options else title


def model_title(model: str) -> str:
    """The registry's ``ModelSpec.title`` (``vgg16`` -> ``VGG16``, ``resnet18`` -> ``ResNet18``); a model
    this poolkit does not know keeps its name."""
    spec = _model_spec(model)
    return spec.title if spec else model


def model_family(model: str) -> str:
    """``vgg``, ``resnet`` (the registry's ``ModelSpec.family``) or the model's own name: what Figure 3
    compares."""
    spec = _model_spec(model)
    return spec.family if spec else model


def model_order(model: str) -> tuple[int, int, str]:
    """Sort key: VGG before ResNet (the study's order, ``poolkit.models.FAMILIES``), then by depth
    (vgg11 < vgg16 < vgg19); unknown models last."""
    spec = _model_spec(model)
    if spec is None:
        return (len(FAMILIES), 0, model)
    return (FAMILIES.index(spec.family), spec.depth, model)


def _model_spec(model: str) -> ModelSpec | None:
    try:
        return get_model_spec(model)
    except ValueError:
        return None


def dataset_title(dataset: str) -> str:
    """The registry's ``DatasetInfo.title`` (``cifar100`` -> ``CIFAR-100``); unknown names are kept as
    they are."""
    from poolkit.data import dataset_info

    try:
        return dataset_info(dataset).title
    except ValueError:
        return dataset


def method_order(pool: str) -> tuple[int, str]:
    """Sort key: the study's order first, then every other method by name."""
    return (STUDY_ORDER.index(pool), "") if pool in STUDY_ORDER else (len(STUDY_ORDER), pool)


def dataset_order(dataset: str) -> tuple[int, str]:
    """Sort key: the study's datasets in its order, then every other dataset by name."""
    return (
        (_DATASET_ORDER.index(dataset), "") if dataset in _DATASET_ORDER else (len(_DATASET_ORDER), dataset)
    )


def format_number(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text.replace("-", "−")


def format_p(p: float | None, prefix: str = "") -> str:
    """``p=0.031`` / ``p<0.001`` (with ``prefix="p"``), ``0.031`` / ``<0.001`` without."""
    if p is None:
        return "—"
    if p < 0.001:
        return f"{prefix}<0.001"
    return f"{prefix}={p:.3f}" if prefix else f"{p:.3f}"


def format_comparison(
    c: PairedComparison | None, verdict: str, p_holm: float | None = None, family_size: int = 0
) -> str:
    """``"+0.41 [−0.90, +1.72], p=0.310 (Holm 0.930) (inconclusive)"``: a paired Δ as the tables show it."""
    if c is None:
        return "—"
    if c.n == 0:
        return "no seed shared with max"
    text = format_number(c.mean, sign=True)
    if c.ci_low is not None:
        text += f" [{format_number(c.ci_low, sign=True)}, {format_number(c.ci_high, sign=True)}]"
    if c.p is not None:
        text += f", {format_p(c.p, 'p')}"
        if p_holm is not None and family_size > 1:
            text += f" (Holm {format_p(p_holm)})"
    return text if verdict == "significant" else f"{text} ({verdict})"


def seed_word(seeds: Sequence[int]) -> str:
    return "seed" if len(seeds) == 1 else "seeds"


def seed_list(seeds: Iterable[int]) -> str:
    return ", ".join(str(s) for s in seeds)
