"""``python -m poolkit.bench``: the same as ``poolkit bench``."""

import argparse
import sys

from poolkit import bench

if __name__ == "__main__":  # pragma: no cover
    cli = argparse.ArgumentParser(prog="poolkit bench", description=bench.__doc__)
    bench.add_arguments(cli)
    sys.exit(bench.main(cli.parse_args()))
