"""DESIGN.md's dependency rules, checked on the real import graph."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("module", ["phi3v_data", "phi3v_data.cli", "phi3v_data.validate"])
def test_data_side_imports_no_torch(module):
    code = (
        f"import sys, {module}; "
        "bad = ('torch', 'transformers', 'peft', 'phi3v_train'); "
        "print(','.join(m for m in bad if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def imported_modules(source):
    """Top-level module names a file imports, anywhere in it (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_data_sources_never_import_the_trainer_or_torch():
    forbidden = {"torch", "transformers", "peft", "accelerate", "phi3v_train"}
    for source in (REPO / "phi3v_data").rglob("*.py"):
        assert not imported_modules(source) & forbidden, source
