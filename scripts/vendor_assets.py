"""Fetch the front-end files Segflow serves itself (``app/static/vendor.json``) from the npm
registry, at their pinned versions, so no page needs a CDN.

For each package: download its tarball from registry.npmjs.org, check it against the pinned
``integrity`` (the registry's SHA-512), extract the listed files (the code and its licence
texts) into ``app/static/vendor/NAME/`` (served) or, for ``tests/vendor.json``, into
``tests/vendor/NAME/`` (used only by the tests: axe-core), and write each file's SHA-256 into
the manifest, which ``tests/unit/test_vendored_assets.py`` checks the checked-in files against.

    .venv/bin/python scripts/vendor_assets.py           # after changing a version: set its
                                                        # integrity from `npm view NAME@V dist`
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (manifest, where its packages go): what Segflow serves, and what only its tests use
MANIFESTS = (
    (ROOT / "app" / "static" / "vendor.json", ROOT / "app" / "static" / "vendor"),
    (ROOT / "tests" / "vendor.json", ROOT / "tests" / "vendor"),
)
REGISTRY = "https://registry.npmjs.org"


def fetch(name: str, version: str, integrity: str) -> bytes:
    url = f"{REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310 (a fixed https URL)
        tarball: bytes = answer.read()
    algorithm, _, expected = integrity.partition("-")
    found = base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode()
    if found != expected:
        raise SystemExit(f"{name}@{version}: the tarball's {algorithm} is not the pinned one")
    return tarball


def extract(name: str, tarball: bytes, files: dict[str, str], into: Path) -> dict[str, str]:
    """Write the listed files; their SHA-256s."""
    target = into / name
    target.mkdir(parents=True, exist_ok=True)
    sums = {}
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        for file in files:
            member = archive.extractfile(f"package/{file}")
            if member is None:
                raise SystemExit(f"{name}: {file} is not in the package")
            data = member.read()
            (target / file).parent.mkdir(parents=True, exist_ok=True)
            (target / file).write_bytes(data)
            sums[file] = hashlib.sha256(data).hexdigest()
    return sums


def main() -> None:
    for path, into in MANIFESTS:
        manifest = json.loads(path.read_text())
        for name, package in manifest.items():
            tarball = fetch(name, package["version"], package["integrity"])
            package["files"] = extract(name, tarball, package["files"], into)
            print(f"{name}@{package['version']}: {len(package['files'])} files")
        path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
