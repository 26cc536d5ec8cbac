"""The drawing page: `GET /` serves service/static/index.html, `/static` its CSS and script.

The page is plain HTML, CSS and JavaScript shipped in the package (no build step, nothing
fetched from elsewhere) and talks to the public API only (`GET /models`,
`POST /predict?include_image=true`). It is kept out of the OpenAPI schema: it is not part of
the API. Missing static files answer like every other error, as JSON `{"error": ...}`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page loads only its own files and calls only its own origin; drawings and uploads are
# shown from blob: URLs (previews) and canvases.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Add `GET /` (the page) and `/favicon.ico`, and mount `/static`, on `app`."""
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        raise RuntimeError(f"web page missing: {index} (is service/static packaged?)")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "icon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
