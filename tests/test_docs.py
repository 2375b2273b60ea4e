"""The documentation stays true: the README's code runs, every method is documented."""

from __future__ import annotations

import re
from pathlib import Path

import poolkit

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_api_example_runs():
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no python example"
    namespace: dict[str, object] = {}
    for block in blocks:
        assert len(block.strip().splitlines()) <= 12
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (8, 64, 16, 16)
    assert type(namespace["net"][2]).__name__ == "GatedPool"


def test_readme_quick_start_has_the_two_commands_and_ci_runs_them():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2
    assert commands[0].endswith("poolkit reproduce --preset quick")
    assert commands[1].endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_methods_doc_covers_every_registered_pool():
    text = (ROOT / "docs" / "methods.md").read_text()
    documented = set(re.findall(r"^### `([a-z_]+)`", text, flags=re.M))
    assert documented == set(poolkit.list_pools())
    for name in poolkit.list_pools():
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        assert "Parameters" in section or "parameters" in section, name
        assert "Worked example" in section, name
