"""The web app: `/` serves index.html and `/assets/` its scripts, styles and vendored libraries.

No build step: the browser loads the JavaScript modules as they are in `static/`, and the app talks
to Herald only through the public `/api`. Its only inline script is the import map, allowed by hash.
"""

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
_INDEX = (STATIC_DIR / "index.html").read_text()
_IMPORT_MAP = re.search(r'<script type="importmap">(.*?)</script>', _INDEX, re.DOTALL)
assert _IMPORT_MAP is not None, "index.html must declare its import map"
_IMPORT_MAP_HASH = base64.b64encode(hashlib.sha256(_IMPORT_MAP.group(1).encode()).digest()).decode()
_HEADERS = {
    "x-content-type-options": "nosniff",
    "content-security-policy": (
        f"default-src 'self'; script-src 'self' 'sha256-{_IMPORT_MAP_HASH}'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class _Assets(StaticFiles):
    """The app's files, each answered with the page's headers: index.html is among them, and opened
    as /assets/index.html it must not run without its policy (or in a frame)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


assets = _Assets(directory=STATIC_DIR)


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse(_INDEX, headers=_HEADERS)
