"""The issue's performance targets, evaluated from measured op and model rows (no timing here)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from poolkit.bench.models import ModelResult
from poolkit.bench.ops import OpResult

__all__ = [
    "BANDWIDTH_METHODS",
    "BANDWIDTH_TARGET",
    "FWD_BWD_TARGETS",
    "MEMORY_TARGET",
    "STEP_LOOSE_TARGET",
    "STEP_TIGHT",
    "STEP_TIGHT_TARGET",
    "TARGET_METHODS",
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


#: fwd+bwd time within 1.5x of native max (the study's methods and two literature ones) or 2x (the
#: methods with convolutions).
FWD_BWD_TARGETS: dict[float, tuple[str, ...]] = {
    1.5: (
        "max",
        "tmaxavg",
        "soft_tmaxavg",
        "channel_adaptive",
        "learnable_t",
        "stochastic_mix",
        "mixed",
        "gem",
    ),
    2.0: ("gated", "attention", "lip"),
}
#: The max/average blends whose channels_last forward should reach half the copy bandwidth.
BANDWIDTH_METHODS: tuple[str, ...] = (
    "tmaxavg",
    "soft_tmaxavg",
    "channel_adaptive",
    "learnable_t",
    "stochastic_mix",
    "mixed",
    "gated",
)
BANDWIDTH_TARGET = 0.5
#: VGG16 training step, as a ratio to ``max``: 2% for these, 5% for the rest of the target methods.
STEP_TIGHT: tuple[str, ...] = ("stochastic_mix", "channel_adaptive", "mixed")
STEP_TIGHT_TARGET = 1.02
STEP_LOOSE_TARGET = 1.05
MEMORY_TARGET = 2.0
#: Every method some target judges (``--pools targets``).
TARGET_METHODS: tuple[str, ...] = tuple(m for ms in FWD_BWD_TARGETS.values() for m in ms)


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

    For each method and target, the worst value over every measured case, layout, dtype and device:

    * ``fwd+bwd ≤ 1.5× max`` (study methods, ``mixed``, ``gem``) or ``≤ 2×`` (``gated``, ``attention``,
      ``lip``): ``fwd+bwd`` ratio to :data:`NATIVE` in the same group (hence the same memory layout);
    * ``channels_last fwd ≥ 50% of copy GB/s`` for :data:`BANDWIDTH_METHODS`;
    * ``VGG16 step ≤ +2%`` (:data:`STEP_TIGHT`) or ``≤ +5%`` (the other target methods): the model rows of
      ``vgg16``, median per-round ratio to ``max`` (the IQR of the ratios is given as the spread);
    * ``saved for backward ≤ 2× max``: ``memory`` ratio to :data:`NATIVE`.

    A method without rows is ``missing``; one that failed anywhere is ``error``.
    """
    ops = list(op_rows)
    models = list(model_rows)
    out: list[TargetResult] = []
    for threshold, methods in FWD_BWD_TARGETS.items():
        for m in methods:
            rows = [r for r in ops if r.pool == m and r.mode == "fwd+bwd"]
            out.append(
                _evaluate(f"fwd+bwd ≤ {threshold:g}× max", m, threshold, rows, lambda r: r.ratio, _where)
            )
    for m in BANDWIDTH_METHODS:
        rows = [r for r in ops if r.pool == m and r.mode == "fwd" and r.layout == "channels_last"]
        out.append(
            _evaluate(
                f"channels_last fwd ≥ {BANDWIDTH_TARGET:.0%} of copy GB/s",
                m,
                BANDWIDTH_TARGET,
                rows,
                lambda r: r.copy_fraction,
                lambda r: _where(r, layout=False),
                higher_is_better=True,
                kind="fraction",
            )
        )
    for m in TARGET_METHODS:
        if m == "max":
            continue
        threshold = STEP_TIGHT_TARGET if m in STEP_TIGHT else STEP_LOOSE_TARGET
        steps = [r for r in models if r.pool == m and r.model == "vgg16"]
        out.append(
            _evaluate(
                f"VGG16 step ≤ +{threshold - 1:.0%} vs max",
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
    for m in TARGET_METHODS:
        rows = [r for r in ops if r.pool == m and r.mode == "memory"]
        out.append(
            _evaluate(
                f"saved for backward ≤ {MEMORY_TARGET:g}× max",
                m,
                MEMORY_TARGET,
                rows,
                lambda r: r.ratio,
                _where,
            )
        )
    return out
