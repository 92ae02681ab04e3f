"""The front-end files Segflow serves (app/static/vendor.json) and those only its tests use
(tests/vendor.json) are exactly those pinned, fetched by scripts/vendor_assets.py from the npm
registry, each package with its licence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = [
    (ROOT / "app" / "static" / "vendor.json", ROOT / "app" / "static" / "vendor"),
    (ROOT / "tests" / "vendor.json", ROOT / "tests" / "vendor"),
]


@pytest.mark.parametrize(("manifest", "folder"), MANIFESTS, ids=["served", "tests"])
def test_every_vendored_file_is_the_pinned_one_and_nothing_else_is_there(
    manifest: Path, folder: Path
):
    listed = set()
    for name, package in json.loads(manifest.read_text()).items():
        assert package["version"].count(".") == 2, f"{name}: pin an exact version"
        assert package["integrity"].startswith("sha512-"), name
        assert "LICENSE" in package["files"], f"{name} is shipped without its licence"
        for file, digest in package["files"].items():
            data = (folder / name / file).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, f"{name}/{file} was changed"
            listed.add(f"{name}/{file}")
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert present == listed
