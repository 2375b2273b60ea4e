"""Model-level benchmark: one SGD training step of VGG16 or ResNet18 (ImageNet stem) per pool, interleaved
round-robin, as the median over rounds of each pool's ratio to ``max`` in the same round.

    python benchmarks/bench_models.py --width 0.25 --batch-size 32 --rounds 5        # a quick look
    python benchmarks/bench_models.py --model vgg16 --json benchmarks/results/models-cpu-vgg16.json
    python benchmarks/bench_models.py --model resnet18 --json benchmarks/results/models-cpu-resnet18.json

A thin wrapper over ``poolkit bench --level model``: every option of ``poolkit bench --help`` works here.
See benchmarks/README.md for the commands of the full runs and docs/benchmarks.md for what is measured.
"""

from __future__ import annotations

import argparse
import sys

from poolkit import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="bench_models.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    bench.add_arguments(parser)
    argv = ["--level", "model", *sys.argv[1:]]
    args = parser.parse_args(argv)
    args._argv = argv
    sys.exit(bench.main(args))
