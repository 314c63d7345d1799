"""Imports flow one way (docs/ARCHITECTURE.md): checked on the source, so a stray import fails CI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = ("common", "feature_specs", "pipeline", "models", "serving", "rocketctr")
ALLOWED = {
    "common": {"common"},
    "feature_specs": {"common", "feature_specs"},
    "pipeline": {"common", "feature_specs", "pipeline"},
    "models": {"common", "feature_specs", "models"},
    "serving": {"common", "feature_specs", "models", "serving"},
    "rocketctr": set(PROJECT),
}


def project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PROJECT)
    return found


@pytest.mark.parametrize("package", PROJECT)
def test_imports_flow_one_way(package):
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        bad = project_imports(path) - ALLOWED[package]
        if bad:
            offenders.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_nothing_imports_the_cli():
    for package in PROJECT[:-1]:
        for path in (REPO / package).rglob("*.py"):
            assert "rocketctr" not in project_imports(path), path


def test_no_keras3_imports():
    for package in PROJECT:
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    assert not any(a.name == "keras" or a.name.startswith("keras.") for a in node.names), path
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert not (node.module == "keras" or node.module.startswith("keras.")), path


def test_architecture_page_names_every_library_module():
    """docs/ARCHITECTURE.md is how a newcomer finds a concept: every library module is named there (the CLI's
    one-module-per-subcommand folder is described once, as a rule)."""
    page = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    missing = [str(p.relative_to(REPO)) for package in PROJECT for p in sorted((REPO / package).rglob("*.py"))
               if p.name != "__init__.py" and "commands" not in p.parts and p.name not in page]
    assert not missing, f"not in docs/ARCHITECTURE.md: {missing}"
