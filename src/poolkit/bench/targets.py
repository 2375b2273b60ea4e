"""Issue 11's performance targets, evaluated from measured op and model rows (no timing here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from poolkit.bench.models import ModelResult
from poolkit.bench.ops import OpResult

__all__ = [
    "BLENDS",
    "FWD_BWD_TARGETS",
    "LARGE_CASES",
    "MEMORY_TARGETS",
    "SMALL_CASES",
    "STEM_CASES",
    "STEP_METHODS",
    "STEP_TARGETS",
    "TARGET_METHODS",
    "TOP_K",
    "FwdBwdTarget",
    "TargetResult",
    "evaluate_targets",
]


@dataclass(frozen=True)
class TargetResult:
    """One target for one method: the worst measured value and where it was measured.

    ``status`` is ``"met"``, ``"not met"``, ``"missing"`` (nothing measured) or ``"error"`` (the pool
    failed in some measured entry; ``where`` says where and why).
    """

    target: str
    method: str
    threshold: float
    value: float | None
    where: str
    status: str
    kind: str = "ratio"
    spread: str = ""

    def line(self) -> str:
        """``"fwd+bwd ≤ 1.5× max: tmaxavg worst 1.32× (vgg16-1, nchw, float32) met"``."""
        if self.status == "missing":
            return f"{self.target}: {self.method} missing (not measured)"
        if self.status == "error":
            return f"{self.target}: {self.method} error ({self.where})"
        assert self.value is not None
        if self.kind == "fraction":
            value = f"{self.value:.0%}"
        elif self.kind == "percent":
            value = f"{self.value - 1:+.1%}"
        else:
            value = f"{self.value:.2f}×"
        spread = f", {self.spread}" if self.spread else ""
        return f"{self.target}: {self.method} worst {value} ({self.where}{spread}) {self.status}"


#: The issue's method groups: the max/average blends, the top-K (T-Max-Avg) family, and the rest it judges.
BLENDS: tuple[str, ...] = ("channel_adaptive", "mixed", "stochastic_mix")
TOP_K: tuple[str, ...] = ("tmaxavg", "soft_tmaxavg", "learnable_t")
#: The op cases by size: VGG16's large pools, the ResNet ImageNet-stem pool (3x3/2 p1), and small tensors
#: (VGG16's last two pools, 128x512x4x4 and 128x512x2x2), where per-call overhead dominates.
LARGE_CASES: tuple[str, ...] = ("vgg16-1", "vgg16-2", "vgg16-3")
STEM_CASES: tuple[str, ...] = ("resnet-stem",)
SMALL_CASES: tuple[str, ...] = ("vgg16-4", "vgg16-5")


@dataclass(frozen=True)
class FwdBwdTarget:
    """fwd+bwd time ≤ ``threshold`` × native max for ``methods`` on ``cases`` (in the same layout)."""

    threshold: float
    methods: tuple[str, ...]
    cases: tuple[str, ...]
    scope: str

    @property
    def label(self) -> str:
        return f"fwd+bwd ≤ {self.threshold:g}× max ({self.scope})"


#: Issue 11's op targets (every layout and dtype measured counts; the worst one is judged).
FWD_BWD_TARGETS: tuple[FwdBwdTarget, ...] = (
    FwdBwdTarget(1.25, BLENDS + TOP_K, LARGE_CASES, "VGG16 cases"),
    FwdBwdTarget(1.5, BLENDS, STEM_CASES, "ResNet stem"),
    FwdBwdTarget(2.0, TOP_K, STEM_CASES, "ResNet stem"),
    FwdBwdTarget(1.5, ("gem",), LARGE_CASES + STEM_CASES, "large cases"),
    FwdBwdTarget(2.0, ("gated", "attention"), LARGE_CASES + STEM_CASES, "large cases, convolutions included"),
    FwdBwdTarget(3.0, (*BLENDS, *TOP_K, "gem", "gated", "attention"), SMALL_CASES, "small tensors"),
)
#: Training step vs ``max``: every method of the study (but max itself).
STEP_METHODS: tuple[str, ...] = (
    "tmaxavg", "soft_tmaxavg", "channel_adaptive", "learnable_t", "gated", "attention", "stochastic_mix",
)  # fmt: skip
STEP_TARGETS: dict[str, float] = {"vgg16": 1.02, "resnet18": 1.05}
#: Saved-for-backward bytes vs native max: the blends save an index instead of the input.
MEMORY_TARGETS: dict[float, tuple[str, ...]] = {1.0: BLENDS, 2.0: (*TOP_K, "gem", "gated", "attention")}
#: Every method some target judges (``--pools targets``).
TARGET_METHODS: tuple[str, ...] = (*BLENDS, *TOP_K, "gem", "gated", "attention")


def _where(r: OpResult, *, layout: bool = True) -> str:
    parts = [r.case, r.layout if layout else "", r.dtype, r.device if r.device != "cpu" else ""]
    return ", ".join(p for p in parts if p)


def _evaluate(
    target: str,
    method: str,
    threshold: float,
    rows: Sequence[Any],
    value: Callable[[Any], float | None],
    where: Callable[[Any], str],
    *,
    higher_is_better: bool = False,
    kind: str = "ratio",
    spread: Callable[[Any], str] | None = None,
) -> TargetResult:
    if not rows:
        return TargetResult(target, method, threshold, None, "", "missing", kind)
    failed = [r for r in rows if r.error is not None or value(r) is None]
    if failed:
        r = failed[0]
        why = r.error or "no reference measured in the same group"
        return TargetResult(target, method, threshold, None, f"{where(r)}: {why}", "error", kind)
    pick = min if higher_is_better else max
    worst = pick(rows, key=lambda r: value(r))  # type: ignore[arg-type, return-value]
    v = value(worst)
    assert v is not None
    met = v >= threshold if higher_is_better else v <= threshold
    return TargetResult(
        target,
        method,
        threshold,
        v,
        where(worst),
        "met" if met else "not met",
        kind,
        spread(worst) if spread else "",
    )


def evaluate_targets(
    op_rows: Iterable[OpResult] = (), model_rows: Iterable[ModelResult] = ()
) -> list[TargetResult]:
    """The issue's targets, evaluated from measured rows (a pure function: no timing happens here).

    For each target and method, the worst value over every measured row it covers:

    * :data:`FWD_BWD_TARGETS`: the ``fwd+bwd`` ratio to :data:`NATIVE` in the same group (same tensor and
      memory layout), over the target's cases (``≤ 1.25×`` blends and top-K on VGG16's large pools, ``≤ 1.5×``
      blends and ``≤ 2×`` top-K at the ResNet stem, ``≤ 1.5×`` GeM and ``≤ 2×`` gated/attention on the large
      cases, ``≤ 3×`` for every judged method on small tensors);
    * :data:`STEP_TARGETS`: VGG16 step ``≤ +2%`` and ResNet18 step ``≤ +5%`` vs ``max`` for every study
      method, the median per-round ratio (the IQR of the ratios is given as the spread);
    * :data:`MEMORY_TARGETS`: saved for backward ``≤ 1×`` native max for the blends, ``≤ 2×`` for the others.

    Rows of custom ``--shape`` cases are not judged. A method without rows is ``missing``; one that failed
    anywhere is ``error``.
    """
    ops = list(op_rows)
    models = list(model_rows)
    out: list[TargetResult] = []
    for target in FWD_BWD_TARGETS:
        for m in target.methods:
            rows = [r for r in ops if r.pool == m and r.mode == "fwd+bwd" and r.case in target.cases]
            out.append(_evaluate(target.label, m, target.threshold, rows, lambda r: r.ratio, _where))
    for model, threshold in STEP_TARGETS.items():
        for m in STEP_METHODS:
            steps = [r for r in models if r.pool == m and r.model == model]
            out.append(
                _evaluate(
                    f"{model} step ≤ +{threshold - 1:.0%} vs max",
                    m,
                    threshold,
                    steps,
                    lambda r: r.ratio,
                    lambda r: r.config,
                    kind="percent",
                    spread=lambda r: (
                        f"IQR {r.ratio_q25 - 1:+.1%}..{r.ratio_q75 - 1:+.1%} over {r.rounds} rounds"
                        if r.ratio_q25 is not None and r.ratio_q75 is not None
                        else ""
                    ),
                )
            )
    for threshold, methods in MEMORY_TARGETS.items():
        for m in methods:
            rows = [r for r in ops if r.pool == m and r.mode == "memory"]
            out.append(
                _evaluate(
                    f"saved for backward ≤ {threshold:g}× max", m, threshold, rows, lambda r: r.ratio, _where
                )
            )
    return out
