"""Op-level benchmark: every pool on the grid of cases x layouts x dtypes, forward, forward + backward and
saved-for-backward memory, each as a ratio to native ``F.max_pool2d`` on the same tensor in the same run.

    python benchmarks/bench_ops.py --case vgg16-1 --batch 16 --min-run-time 0.05     # a quick look
    python benchmarks/bench_ops.py --json benchmarks/results/ops-cpu.json \\
        --markdown benchmarks/results/ops-cpu.md                                    # the full grid

A thin wrapper over ``poolkit bench --level op``: every option of ``poolkit bench --help`` works here.
See benchmarks/README.md for the commands of the full grid and docs/benchmarks.md for what is measured.
"""

from __future__ import annotations

import argparse
import sys

from poolkit import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="bench_ops.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    bench.add_arguments(parser)
    argv = ["--level", "op", *sys.argv[1:]]
    args = parser.parse_args(argv)
    args._argv = argv
    sys.exit(bench.main(args))
