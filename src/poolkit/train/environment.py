"""What ``env.json`` records about the machine and the code a run trained with."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import poolkit
from poolkit.train import distributed as D

__all__ = ["cpu_name", "environment"]


def _git_revision() -> str | None:
    """The commit of the poolkit checkout this code runs from (``+dirty`` with local changes), if any."""
    package = Path(poolkit.__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=package, capture_output=True, text=True, timeout=10
        )
        if top.returncode != 0 or package not in {
            Path(top.stdout.strip()) / p for p in ("src/poolkit", "poolkit")
        }:
            return None
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=package, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device: torch.device, ctx: D.DistContext) -> dict[str, Any]:
    """What ``env.json`` holds: versions, platform, host, CPU, device, world size, git revision, argv."""
    cuda = device.type == "cuda"
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "poolkit": poolkit.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "world_size": ctx.world_size,
        "git_revision": _git_revision(),
        "argv": list(sys.argv),
    }
