"""The light core install: ``pip install poolkit`` needs only torch and numpy.

The harness (``poolkit[harness]``) and tracking (``poolkit[tracking]``) packages are extras. Here the
harness's third-party packages are made unimportable in a fresh interpreter, which is what a venv with
only torch and numpy looks like to poolkit: the layers, the registry, the models and ``swap_pooling``
work, and a harness command says which pip command installs what it needs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

#: Import names (top-level entries of site-packages) that only the extras bring, ninja included.
EXTRA_ENTRIES = frozenset({
    "yaml", "_yaml", "tqdm", "PIL", "pillow.libs", "matplotlib", "mpl_toolkits", "pylab.py", "scipy",
    "scipy.libs", "mlxtend", "submitit", "tensorboard", "tensorboard_data_server", "mlflow", "sqlalchemy",
    "alembic", "transformers", "ninja",
})  # fmt: skip
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def core_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A view of this venv's site-packages without the extras' packages (and without .pth hooks).

    A fresh interpreter started with ``-S`` on this view (and poolkit's ``src``) sees what a venv with only
    torch and numpy has: the extras' modules are really absent, so ``importlib.util.find_spec`` returns
    None for them, as torch's own optional-dependency probes expect.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp_path_factory.mktemp("core-site")
    for entry in site.iterdir():
        if entry.name in EXTRA_ENTRIES or entry.suffix == ".pth" or entry.name.startswith("__editable__"):
            continue
        (view / entry.name).symlink_to(entry)
    return view


def _run_without_extras(core_site: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(core_site)])}
    return subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_core_requirements_are_torch_and_numpy_only():
    try:
        requires = metadata.requires("poolkit") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - the suite runs on an installed poolkit
        pytest.skip("poolkit is not installed (pip install -e .)")
    core = sorted(re.split(r"[<>=!~; \[]", r)[0] for r in requires if "extra ==" not in r)
    assert core == ["numpy", "torch"]
    extras = set(metadata.metadata("poolkit").get_all("Provides-Extra") or [])
    assert {"harness", "tracking", "all", "test"} <= extras


def test_layers_models_and_swap_pooling_work_without_the_extras(core_site):
    done = _run_without_extras(
        core_site,
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
        """,
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
def test_a_harness_command_without_its_extra_names_the_pip_command(core_site, argv):
    done = _run_without_extras(
        core_site,
        f"""
        import sys
        from poolkit.cli import main
        sys.exit(main({argv!r}))
        """,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert 'pip install "poolkit[harness]"' in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
