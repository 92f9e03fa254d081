"""The operations page (docs/web-ui.md): one static HTML shell under /ui, its scripts under
/static/ui, bpmn-js under /static/bpmn-js.

The shell and scripts hold no data and need no token: the scripts read everything through the
JSON API with the bearer token the operator typed in (kept in sessionStorage), so the API's
rules (roles, validation, constant-time token comparison) are the page's rules too, and no
cookie means no cross-site request forgery to guard against. Scripts only come from this
server (Content-Security-Policy) and put data into the page as text, never as HTML.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: Installed by `./dev setup` (npm ci in web/, pinned by its package-lock.json).
BPMN_JS = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "bpmn-js" / "dist"
#: bpmn-js sets style attributes on the SVG it draws, hence 'unsafe-inline' for styles only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


async def shell(request: Request) -> Response:
    """Every page is the same shell; its script draws the page the path names."""
    return FileResponse(STATIC / "shell.html", headers={"Cache-Control": "no-store"})


async def home(request: Request) -> Response:
    return RedirectResponse("/ui/instances", status_code=302)


def routes(bpmn_js: Path = BPMN_JS) -> list[BaseRoute]:
    found: list[BaseRoute] = [
        Route("/", home, methods=["GET"]),
        Route("/ui", home, methods=["GET"]),
        Route("/ui/{page:path}", shell, methods=["GET"]),
        Mount("/static/ui", StaticFiles(directory=STATIC), name="ui-static"),
    ]
    if (bpmn_js / "bpmn-navigated-viewer.production.min.js").is_file():
        found.append(Mount("/static/bpmn-js", StaticFiles(directory=bpmn_js), name="bpmn-js"))
    else:
        log.warning(
            "bpmn-js is not installed (%s): the web page will show no diagrams; "
            "run ./dev setup (needs npm)",
            bpmn_js,
        )
    return found


class SecurityHeaders:
    """Adds the page's Content-Security-Policy and its companions to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
