"""The package list in pyproject.toml names every package folder, and apps install as mambakit.apps.*."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = set()
    for top, name in (("mambakit", "mambakit"), ("apps", "mambakit.apps")):
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top)
            on_disk.add(".".join([name, *relative.parts]))
    assert set(config["packages"]) == on_disk


def test_apps_import_under_the_core_namespace():
    import importlib

    for domain in ("genomics", "audio", "vision", "text"):
        assert importlib.import_module(f"mambakit.apps.{domain}").__name__ == f"mambakit.apps.{domain}"
