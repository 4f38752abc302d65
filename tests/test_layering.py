"""The layering rules of DEVELOPERS.md, checked on the source: domain packages free of Dagster, public Dagster APIs
only, development tools outside the installed package."""

import ast
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

from tests.conftest import REPO_ROOT
from tests.test_stage_order import STAGES


DOMAIN_PACKAGES = STAGES
# Code that ships or that users run (bench and experiments are run by `make bench`); tests may reach private Dagster
# APIs where Dagster offers no public one (backfill records, the instance-config schema).
PRODUCT_DIRS = ("opengrok_dagster", "assets", "resources", "bench", "experiments", "devtools")
# Run from the repository root, never installed: the installed package must not import them.
REPOSITORY_ONLY = ("devtools", "tests", "bench", "experiments")


def python_files(*directories: str) -> list[Path]:
    return sorted(p for d in directories for p in (REPO_ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_no_product_module_imports_a_private_dagster_module():
    private = {
        str(path.relative_to(REPO_ROOT)): sorted(
            m for m in imported_modules(path) if m.split(".")[0].startswith("dagster") and "._" in f".{m}"
        )
        for path in python_files(*PRODUCT_DIRS)
    }
    assert {path: modules for path, modules in private.items() if modules} == {}


def test_the_private_import_check_sees_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from dagster._core.errors import DagsterError\nimport dagster_shared._check\nfrom dagster import asset\n"
    )
    assert sorted(m for m in imported_modules(sample) if "._" in f".{m}") == [
        "dagster._core.errors",
        "dagster_shared._check",
    ]


# Imports every module of the domain packages, one after another, and names the first that brought in Dagster
# (the Pipes protocol package included: the fine-tune's Pipes entry point belongs to the orchestration layer).
IMPORT_EACH = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dagster", "dagster_pipes", "dagster_shared"))
    if loaded:
        print(json.dumps({"module": name, "loaded": loaded[:5]}))
        break
"""


def test_domain_packages_import_no_dagster():
    modules = [
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in DOMAIN_PACKAGES
        for path in python_files(f"opengrok_dagster/{package}")
    ]
    assert len(modules) > 40, "every domain module is checked"
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, json.dumps(modules)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"a domain module imports Dagster: {result.stdout}"


def test_devtools_benches_and_experiments_are_neither_installed_nor_imported_by_the_product():
    include = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    installed = find_packages(str(REPO_ROOT), include=include)
    assert "opengrok_dagster" in installed and not [p for p in installed if p.split(".")[0] in REPOSITORY_ONLY]
    users = {
        str(p.relative_to(REPO_ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] in REPOSITORY_ONLY)
        for p in python_files("opengrok_dagster", "assets", "resources")
    }
    assert {path: modules for path, modules in users.items() if modules} == {}


def test_the_benches_are_performance_benches_only():
    """bench/ measures speed and memory; the studies (efficacy, tokenizer alignment) live in experiments/, which
    bench/ runs as sections by module name and never imports."""
    users = {
        str(p.relative_to(REPO_ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "experiments")
        for p in python_files("bench")
    }
    assert {path: modules for path, modules in users.items() if modules} == {}
    assert not {"distillation_efficacy", "efficacy_tasks", "efficacy_page", "kd_alignment"} & {
        p.stem for p in python_files("bench")
    }


def fixture_names(path: Path) -> set[str]:
    return {
        node.name
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list)
    }


def test_fixtures_are_shared_through_conftest_not_imported_from_other_test_modules():
    imported = []
    for path in python_files("tests"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"):
                source = REPO_ROOT / Path(*node.module.split(".")).with_suffix(".py")
                imported += [
                    f"{path.name}: {alias.name}" for alias in node.names if alias.name in fixture_names(source)
                ]
    assert imported == []


@pytest.mark.integration
def test_the_wheel_ships_the_configuration_it_reads(tmp_path):
    """A wheel install runs from anywhere: the catalogues and profiles the settings point at are package data.
    Built from a copy of the source, so that setuptools' ``build/`` neither lands in the checkout nor carries a
    stale file of an earlier build into the wheel."""
    source = tmp_path / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".opengrok", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "node_modules"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("opengrok_dagster-*.whl")
    members = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "opengrok_dagster" / "config").rglob("*")
        if path.is_file()
    }
    assert shipped and shipped <= members
