"""The front-end files Segflow serves are exactly those pinned in app/static/vendor.json
(fetched by scripts/vendor_assets.py from the npm registry), each package with its licence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"


def test_every_vendored_file_is_the_pinned_one_and_nothing_else_is_there():
    manifest = json.loads((STATIC / "vendor.json").read_text())
    listed = set()
    for name, package in manifest.items():
        assert package["version"].count(".") == 2, f"{name}: pin an exact version"
        assert package["integrity"].startswith("sha512-"), name
        assert "LICENSE" in package["files"], f"{name} is served without its licence"
        for file, digest in package["files"].items():
            data = (STATIC / "vendor" / name / file).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, f"{name}/{file} was changed"
            listed.add(f"{name}/{file}")
    present = {
        str(path.relative_to(STATIC / "vendor"))
        for path in (STATIC / "vendor").rglob("*")
        if path.is_file()
    }
    assert present == listed
