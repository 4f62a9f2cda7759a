"""Where a status email links, `/tasks/{id}`: the web app, which opens that task's view.

Anyone may load it, so it is the app's page itself, the same for every number: it asks for a sign-in
and then loads the task through the API, and tells nothing, not even whether the task exists.
"""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from src.validation import PathId
from src.web.app import index

router = APIRouter(include_in_schema=False)


def task_page_url(base_url: str, task_id: int) -> str:
    return f"{base_url.rstrip('/')}/tasks/{task_id}"


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(task_id: PathId) -> HTMLResponse:
    return index()
