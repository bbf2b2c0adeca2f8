"""The probe and profiling scripts behind committed numbers stay importable as the package changes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.py"))


def test_there_are_scripts():
    assert SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_without_running_and_documents_its_command(path):
    spec = importlib.util.spec_from_file_location(f"experiments_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # every script runs only under `if __name__ == "__main__"`
    assert module.__doc__ and ("python experiments/" in module.__doc__ or "COMMAND" in module.__doc__)


@pytest.mark.parametrize("path", sorted(SCRIPTS[0].parent.glob("*.sh")), ids=lambda p: p.name)
def test_shell_script_parses(path):
    import subprocess

    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
