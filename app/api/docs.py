"""``/docs``: the API's Swagger UI, with every file it loads served by Segflow itself
(``/static/vendor/swagger-ui-dist/``, pinned in ``app/static/vendor.json`` with its licence),
so the page works on a machine with no internet. FastAPI's own page loads Swagger from a CDN
and its favicon from fastapi.tiangolo.com: offline it was blank."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SWAGGER = "/static/vendor/swagger-ui-dist"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="Segflow API",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
        # Swagger's validator badge calls validator.swagger.io: nothing leaves this machine.
        swagger_ui_parameters={"validatorUrl": None},
    )


def mount(app: FastAPI) -> None:
    """The docs page and the static files it (and any page) loads."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
