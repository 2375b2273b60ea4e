"""Layer-level benchmark: every pool, forward + backward, relative to native max pooling.

    python benchmarks/bench_layers.py                 # CPU: two shapes; GPU: VGG16's five pool inputs
    python benchmarks/bench_layers.py --device cuda --out benchmarks/results/layers-h100.json

A thin wrapper over ``poolkit bench --level layer`` (every option of it works here), so that the numbers in
benchmarks/README.md can be regenerated with one command.
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
    args = parser.parse_args(["--level", "layer", *sys.argv[1:]])
    sys.exit(bench.main(args))
