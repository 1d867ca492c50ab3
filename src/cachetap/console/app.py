"""The console's ASGI app: pages, static files (vendored, no CDN), the admin API and its OpenAPI.

`cachetap console` serves it with uvicorn; `cachetap run` supervises that process. The pages are
shells that fetch the API every few seconds (console.js), so they show exactly what the API says.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cachetap import __version__
from cachetap.console.api import build_router
from cachetap.console.auth import Guard
from cachetap.settings import Settings
from cachetap.store.admin_token import admin_token

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PAGES = {"overview": "Overview", "downloads": "Downloads", "catalog": "Catalog", "hosts": "Hosts",
         "nodes": "Nodes", "tasks": "Task lookup"}
# Everything from this origin only: no inline script, no framing (no clickjacking of the buttons).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class TokenSource:
    """The admin token, looked up once it exists (the first `cachetap run` makes it)."""

    def __init__(self, settings: Settings, catalog) -> None:
        self.settings, self.catalog = settings, catalog
        self._token = ""

    def __call__(self) -> str:
        if not self._token:
            self._token = admin_token(self.catalog, self.settings.cache_dir, self.settings.admin_token)
        return self._token


def create_console(settings: Settings, celery_app=None) -> FastAPI:
    if celery_app is None:
        from cachetap.tasks.app import create_app

        celery_app = create_app(settings)
    app = FastAPI(title="cachetap console", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Admin API of cachetap. Reads: loopback, or `Authorization: Bearer <admin token>`; "
                              "actions (POST): the token always.")
    app.state.celery = celery_app
    app.state.settings = settings
    guard = Guard(TokenSource(settings, celery_app.catalog))
    app.include_router(build_router())
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")

    @app.middleware("http")
    async def guarded(request: Request, call_next):
        """auth.Guard judges every API request before its body is read; every answer gets the
        security headers."""
        refused = None
        if request.url.path.startswith("/api/") and request.url.path != "/api/openapi.json":
            refused = await run_in_threadpool(guard.refusal, request)  # the token may need the catalog
        if refused is not None:
            status, reason = refused
            response = JSONResponse({"detail": reason}, status_code=status,
                                    headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/overview", status_code=303)

    @app.get("/api", include_in_schema=False, response_class=HTMLResponse)
    def api_docs(request: Request):
        return templates.TemplateResponse(request, "api.html", {"pages": PAGES, "page": "api",
                                                                "version": __version__,
                                                                "schema": app.openapi()})

    def page(name: str):
        def show(request: Request):
            return templates.TemplateResponse(request, f"{name}.html", {"pages": PAGES, "page": name,
                                                                       "version": __version__})
        return show

    for name in PAGES:
        app.get(f"/{name}", include_in_schema=False, response_class=HTMLResponse)(page(name))
    return app
