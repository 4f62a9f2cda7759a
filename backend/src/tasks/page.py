"""The page a status email links to, `/tasks/{id}`: a browser gets a page rather than the API's 401 JSON.

Until the web app is served at `/`, it only says how to sign in and fetch the task through the API.
Anyone may load it, so it shows nothing but the number from its own URL: not even whether the task
exists. It runs no script and loads nothing, and its headers hold the browser to that.
"""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from src.http_guards import page_headers
from src.validation import PathId

router = APIRouter(include_in_schema=False)
_templates = Jinja2Templates(directory=Path(__file__).parent / "templates")  # autoescapes .html
_HEADERS = page_headers()


def task_page_url(base_url: str, task_id: int) -> str:
    return f"{base_url.rstrip('/')}/tasks/{task_id}"


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(task_id: PathId, request: Request) -> HTMLResponse:
    return _templates.TemplateResponse(request, "task_page.html", {"task_id": task_id}, headers=_HEADERS)
