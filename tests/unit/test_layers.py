"""Every module has a layer: import-linter checks only the modules its layers name, so a new
module outside them would escape the direction of imports unnoticed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layer_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    [layers] = [
        contract["layers"]
        for contract in config["tool"]["importlinter"]["contracts"]
        if contract["type"] == "layers"
    ]
    names = set()
    for layer in layers:
        for part in layer.replace("|", ":").split(":"):
            names.add(part.strip().strip("()"))
    return names


def _modules() -> list[str]:
    found = []
    for package in ("app", "pipelines"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append(".".join(parts))
    return sorted(found)


def _outside(modules: list[str], layers: set[str]) -> list[str]:
    return [
        module
        for module in modules
        if module not in ("app", "pipelines")  # the packages themselves hold only layers
        and not any(module == layer or module.startswith(f"{layer}.") for layer in layers)
    ]


def test_every_module_of_app_and_pipelines_is_in_a_layer():
    assert _outside(_modules(), _layer_modules()) == [], "add these to a layer in pyproject.toml"


def test_a_module_missing_from_the_layers_is_named():
    modules = ["app", "app.rules.store", "pipelines.sources", "app.newcomer"]
    assert _outside(modules, _layer_modules()) == ["app.newcomer"]
