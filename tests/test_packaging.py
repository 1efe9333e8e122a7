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


def test_package_data_globs_ship_every_data_and_model_file_within_the_size_budget():
    from fnmatch import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = []
    for folder in ("data", "pretrained"):
        for file in (ROOT / "apps").glob(f"*/{folder}/**/*"):
            if not file.is_file() or "__pycache__" in file.parts:
                continue
            relative = file.relative_to(ROOT / "apps")
            app, inside = relative.parts[0], str(Path(*relative.parts[1:]))
            patterns = globs.get(f"mambakit.apps.{app}", [])
            assert any(fnmatch(inside, pattern) for pattern in patterns), f"{file} is not in package-data"
            shipped.append(file)
    assert (ROOT / "apps" / "audio" / "pretrained" / "fsdd-small" / "model.safetensors") in shipped
    assert sum(f.stat().st_size for f in shipped) < 20 * 2**20  # the wheel stays well under 25 MB
