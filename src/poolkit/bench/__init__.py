"""``poolkit bench``: the cost of every pool against native max pooling measured in the same run.

Three measurements, each reported as a ratio to a reference timed in the same process, on the same
tensor, threads and device, so that ratios carry across machines when absolute times do not:

* **op** (``--level op``; ``layer`` is an alias): one pooling layer on a grid of named cases (VGG16's five
  pools at batch 128 on 32x32 images, the ResNet ImageNet-stem pool) x memory layouts (NCHW,
  channels_last) x dtypes (float32, bfloat16) x modes:

  - ``fwd``: the training-mode forward with autograd disabled (``torch.no_grad()``): what a training
    forward costs minus the graph recording (stochastic pools draw their random numbers);
  - ``fwd+bwd``: the training-mode forward with autograd, then ``torch.autograd.grad(y, [x, *params],
    grad_out)`` (no accumulation into ``.grad``, which would add the same input-sized add to every pool);
  - ``memory``: the bytes the forward saves for backward (``saved_tensors_hooks``, one count per storage).

  Each group (case, layout, dtype, device) builds one input tensor and times, on that tensor, a copy into a
  preallocated buffer (the bandwidth reference), ``x.clone()``, native ``F.max_pool2d`` (the ratio
  reference) and then every pool. Times are medians over repeated samples
  (:func:`poolkit.bench.timing._time`).
* **model** (``--level model``): one SGD training step (forward, loss, backward, update) of VGG16 (with
  ``--width``) or ResNet18 with the ImageNet stem, per pool, interleaved round-robin so that slow drifts of
  the machine hit every pool alike; each pool's figure is the median over rounds of its ratio to ``max`` in
  the same round, with the interquartile range of those ratios.
* **targets**: the issue's performance targets evaluated from the measured rows
  (:func:`evaluate_targets`), printed at the end as met / not met with the worst measured ratio.

One module per part: :mod:`~poolkit.bench.timing` (timers, GB/s, traffic, saved-tensor bytes),
:mod:`~poolkit.bench.ops` (the cases and the op grid), :mod:`~poolkit.bench.models` (the training step),
:mod:`~poolkit.bench.targets` (the targets), :mod:`~poolkit.bench.output` (tables, markdown, JSON/CSV,
the environment) and :mod:`~poolkit.bench.cli` (the command line); the public names of all of them are
re-exported here.

See docs/benchmarks.md for the definitions (GB/s, saved bytes) and the commands of the full grid.
"""

from poolkit.bench.cli import add_arguments, expand_pools, main
from poolkit.bench.models import ModelResult, bench_models
from poolkit.bench.ops import (
    CLONE,
    COPY,
    DTYPES,
    LAYOUTS,
    MODES,
    NATIVE,
    OP_CASES,
    OpCase,
    OpResult,
    bench_ops,
    resolve_cases,
)
from poolkit.bench.output import (
    environment,
    format_model_table,
    format_op_group,
    format_targets,
    load_results,
    markdown_report,
    write_results,
)
from poolkit.bench.targets import FWD_BWD_TARGETS as FWD_BWD_TARGETS
from poolkit.bench.targets import MEMORY_TARGETS as MEMORY_TARGETS
from poolkit.bench.targets import STEP_TARGETS as STEP_TARGETS
from poolkit.bench.targets import TARGET_METHODS, TargetResult, evaluate_targets
from poolkit.bench.timing import MIN_SAMPLES as MIN_SAMPLES
from poolkit.bench.timing import SAMPLE_SECONDS as SAMPLE_SECONDS
from poolkit.bench.timing import SavedBytes, gbps, saved_tensor_bytes

# The ``X as X`` imports (the targets' thresholds, the sampling constants) stay reachable as
# ``poolkit.bench.X``, as before the split, without joining ``__all__``.
__all__ = [
    "CLONE",
    "COPY",
    "DTYPES",
    "LAYOUTS",
    "MODES",
    "NATIVE",
    "OP_CASES",
    "TARGET_METHODS",
    "ModelResult",
    "OpCase",
    "OpResult",
    "SavedBytes",
    "TargetResult",
    "add_arguments",
    "bench_models",
    "bench_ops",
    "environment",
    "evaluate_targets",
    "expand_pools",
    "format_model_table",
    "format_op_group",
    "format_targets",
    "gbps",
    "load_results",
    "main",
    "markdown_report",
    "resolve_cases",
    "saved_tensor_bytes",
    "write_results",
]
