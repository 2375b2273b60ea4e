"""The light core install: ``pip install poolkit`` needs only torch and numpy.

The harness (``poolkit[harness]``) and tracking (``poolkit[tracking]``) packages are extras. Here the
harness's third-party packages are made unimportable in a fresh interpreter, which is what a venv with
only torch and numpy looks like to poolkit: the layers, the registry, the models and ``swap_pooling``
work, and a harness command says which pip command installs what it needs.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest

#: Third-party packages that only the harness and tracking extras bring.
EXTRA_PACKAGES = (
    "yaml", "tqdm", "PIL", "matplotlib", "scipy", "mlxtend", "submitit", "tensorboard", "mlflow",
)  # fmt: skip

_BLOCK = f"""
import importlib.abc, sys
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRA_PACKAGES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
"""


def _run_without_extras(code: str) -> subprocess.CompletedProcess[str]:
    script = _BLOCK + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_core_requirements_are_torch_and_numpy_only():
    try:
        requires = metadata.requires("poolkit") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - the suite runs on an installed poolkit
        pytest.skip("poolkit is not installed (pip install -e .)")
    core = sorted(re.split(r"[<>=!~; \[]", r)[0] for r in requires if "extra ==" not in r)
    assert core == ["numpy", "torch"]
    extras = set(metadata.metadata("poolkit").get_all("Provides-Extra") or [])
    assert {"harness", "tracking", "all", "test"} <= extras


def test_layers_models_and_swap_pooling_work_without_the_extras():
    done = _run_without_extras(
        """
        import torch, poolkit
        from torch import nn
        for name in poolkit.list_pools():
            pool = poolkit.create_pool(name, 2, channels=4)
            assert pool(torch.rand(1, 4, 8, 8)).shape == (1, 4, 4, 4), name
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        poolkit.swap_pooling(net, "gated", example_input=torch.randn(1, 3, 8, 8))
        assert type(net[2]).__name__ == "GatedPool"
        model = poolkit.models.create_model("vgg11", 10, pool="channel_adaptive", width=0.25)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        try:
            import yaml  # noqa: F401
        except ModuleNotFoundError:
            print("core works without the extras")  # and they really are missing in this interpreter
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "core works without the extras"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dataset", "synthetic", "--out", "unused"],
        ["reproduce", "--preset", "quick", "--dry-run"],
        ["report", "runs", "--out", "unused"],
        ["bench", "--pools", "max", "--shape", "2x4x8x8", "--min-run-time", "0.01", "--no-progress"],
        ["list", "presets"],
    ],
    ids=lambda argv: argv[0],
)
def test_a_harness_command_without_its_extra_names_the_pip_command(argv):
    done = _run_without_extras(
        f"""
        import sys
        from poolkit.cli import main
        sys.exit(main({argv!r}))
        """
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert 'pip install "poolkit[harness]"' in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
