"""/docs works on a machine with no internet: every file the page loads is Segflow's own.
(FastAPI's page loads Swagger from cdn.jsdelivr.net: offline it was blank.)"""

from __future__ import annotations

import re

import httpx

from tests.helpers import ServerThread

TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


def test_the_docs_page_loads_only_files_segflow_serves(api: ServerThread):
    page = httpx.get(f"{api.url}/docs")
    assert page.status_code == 200
    assert "http://" not in page.text
    assert "https://" not in page.text
    loaded = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    loaded += re.findall(r"""url: *["']([^"']+)["']""", page.text)
    assert len(loaded) >= 4, loaded  # the script, the styles, the icon, the schema
    for path in loaded:
        assert path.startswith("/"), path
        assert not path.startswith("//"), path
        answer = httpx.get(f"{api.url}{path}")
        assert answer.status_code == 200, path
        for suffix, kind in TYPES.items():
            if path.endswith(suffix):
                assert kind in answer.headers["content-type"], path
    assert '"validatorUrl": null' in page.text  # Swagger's badge would call its validator
    licence = httpx.get(f"{api.url}/static/vendor/swagger-ui-dist/LICENSE")
    assert "Apache License" in licence.text
