"""Model-level benchmark: one SGD training step of a network with each of the study's pools.

    python benchmarks/bench_models.py --model vgg11 --width 0.25            # CPU-sized
    python benchmarks/bench_models.py --model vgg16 --amp --device cuda      # the study's Figure 6 setting

Reports seconds per step and the ratio to the same network with max pooling, measured in the same
process (the study claims every method costs < 8% more training time). A thin wrapper over
``poolkit bench --level model``.
"""

from __future__ import annotations

import argparse
import sys

from poolkit import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    bench.add_arguments(parser)
    args = parser.parse_args(["--level", "model", *sys.argv[1:]])
    sys.exit(bench.main(args))
